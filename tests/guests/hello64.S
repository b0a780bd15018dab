/* Linux 64-bit boot protocol: entered in long mode with paging on (identity map), rsi = zero page.
   Prints a marker on COM1, proves rsi points at a zero page with the "HdrS" magic, reads an unmapped
   MMIO address (the VMM answers 0xff..), then resets through the i8042. */
.include "common.inc"
.code64
.globl _start
_start:
    lea msg(%rip), %rbx
    call puts
    /* boot_params.hdr.header at offset 0x202 must be "HdrS" */
    cmpl $0x53726448, 0x202(%rsi)
    jne bad
    lea zp_ok(%rip), %rbx
    call puts
    /* MMIO exit: read from the MMIO gap where no device lives */
    mov $0xd0ff0000, %eax
    movl (%rax), %eax
    cmpl $0xffffffff, %eax
    jne bad
    lea mmio_ok(%rip), %rbx
    call puts
    mov $RESET_CPU, %al
    out %al, $I8042_CMD
1:  hlt
    jmp 1b
bad:
    lea fail(%rip), %rbx
    call puts
2:  hlt
    jmp 2b
/* puts: print NUL-terminated string at rbx */
puts:
    mov $COM1, %dx
3:  movb (%rbx), %al
    test %al, %al
    jz 4f
    out %al, %dx
    inc %rbx
    jmp 3b
4:  ret
msg:   .asciz "cairn-tiny: long mode\n"
zp_ok: .asciz "cairn-tiny: zero page ok\n"
mmio_ok: .asciz "cairn-tiny: mmio ok\n"
fail:  .asciz "cairn-tiny: FAIL\n"
