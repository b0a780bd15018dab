/* Real mode: a flat binary loaded at 0x1000 and entered at 0x0100:0x0000 (cs base 0x1000). */
.include "common.inc"
.code16
.globl _start
_start:
    mov %cs, %ax
    mov %ax, %ds
    mov $msg, %si
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov $RESET_CPU, %al
    out %al, $I8042_CMD
3:  hlt
    jmp 3b
msg: .asciz "cairn-tiny: real mode\n"
