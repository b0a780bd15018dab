/* PVH entry: 32-bit protected mode, paging off, ebx = hvm_start_info (magic 0x336ec578). */
.include "common.inc"
.section .note.Xen, "a"
    .align 4
    .long 4          /* namesz */
    .long 8          /* descsz: a 64-bit address, as Linux's _ASM_PTR */
    .long 18         /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad pvh_start
.text
.code32
.globl _start
_start:            /* the Linux 64-bit entry: must not be used when the note is present */
    jmp _start
pvh_start:
    mov $0x80000, %esp     /* PVH gives no stack */
    cmpl $0x336ec578, (%ebx)
    jne bad
    mov $msg, %esi
    call puts
    mov $RESET_CPU, %al
    out %al, $I8042_CMD
1:  hlt
    jmp 1b
bad:
    mov $fail, %esi
    call puts
2:  hlt
    jmp 2b
puts:
    mov $COM1, %dx
3:  movb (%esi), %al
    test %al, %al
    jz 4f
    out %al, %dx
    inc %esi
    jmp 3b
4:  ret
msg:  .asciz "cairn-tiny: pvh ok\n"
fail: .asciz "cairn-tiny: FAIL\n"
