/* Prints a marker, then halts with interrupts off forever: the VMM must stay pausable and
   stoppable, and must not spin. */
.include "common.inc"
.code64
.globl _start
_start:
    lea msg(%rip), %rbx
    mov $COM1, %dx
1:  movb (%rbx), %al
    test %al, %al
    jz 2f
    out %al, %dx
    inc %rbx
    jmp 1b
2:  cli
3:  hlt
    jmp 3b
msg: .asciz "cairn-tiny: halted\n"
