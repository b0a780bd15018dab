/* The anchors' guest: prints a start marker, writes one dword to every 4 KiB page from 2 MiB to
   the end of RAM minus 1 MiB (RAM size from the e820 map in the zero page), prints a second marker,
   then rewrites a WINDOW_MIB window (default 16 MiB) forever, printing '.' after each pass.
   r15 counts passes. */
.include "common.inc"
.ifndef WINDOW_MIB
.set WINDOW_MIB, 16
.endif
.code64
.globl _start
_start:
    mov $COM1, %dx
    mov $'S', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    /* highest end address among e820 RAM entries (table at 0x2d0, count at 0x1e8, 20-byte
       entries, type at +16; reserved ranges such as Firecracker's MMIO gaps do not count) */
    movzbl 0x1e8(%rsi), %ecx
    lea 0x2d0(%rsi), %rdi
    xor %r8, %r8
1:  test %ecx, %ecx
    jz 2f
    cmpl $1, 16(%rdi)
    jne 7f
    mov (%rdi), %rax
    add 8(%rdi), %rax
    cmp %r8, %rax
    cmova %rax, %r8
7:  add $20, %rdi
    dec %ecx
    jmp 1b
2:  sub $0x100000, %r8          /* end of RAM - 1 MiB */
    mov $0x200000, %rdi
3:  cmp %r8, %rdi
    jae 4f
    movl %edi, (%rdi)
    add $0x1000, %rdi
    jmp 3b
4:  mov $'T', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    xor %r15, %r15
5:  mov $0x200000, %rdi
    mov $(0x200000 + WINDOW_MIB * 0x100000), %r9
6:  movl %r15d, (%rdi)
    add $0x1000, %rdi
    cmp %r9, %rdi
    jb 6b
    inc %r15
    mov $'.', %al
    out %al, %dx
    jmp 5b
