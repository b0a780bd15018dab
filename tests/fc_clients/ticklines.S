/* The Firecracker client libraries' guest (tests/fc_clients): prints "S", then rewrites a 4 MiB
   window of RAM forever, printing one line "." after each pass, so line-reading consoles see it
   run (tests/guests/ticker64.S prints its dots without newlines). Built by run-tests with
   `as --64 -I tests/guests` and `ld -T tests/guests/flat.ld`. */
.include "common.inc"
.code64
.globl _start
_start:
    mov $COM1, %dx
    mov $'S', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    xor %r15, %r15
1:  mov $0x200000, %rdi
    mov $(0x200000 + 4 * 0x100000), %r9
2:  movl %r15d, (%rdi)
    add $0x1000, %rdi
    cmp %r9, %rdi
    jb 2b
    inc %r15
    mov $'.', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    jmp 1b
