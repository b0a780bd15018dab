/* Jumps into the MMIO gap: KVM cannot fetch instructions from MMIO, so the run ends in
   KVM_EXIT_INTERNAL_ERROR (emulation failure) on any host. The VMM must report it and exit. */
.include "common.inc"
.code64
.globl _start
_start:
    mov $COM1, %dx
    mov $'J', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    mov $0xd0ff0000, %rax
    jmp *%rax
