/* Prints what the vCPU was given, for the CPU template tests: CPUID 0x40000001 (KVM's feature
   leaf) EAX, CPUID 0x400000f0 EBX (a leaf KVM does not have) and MSR_STAR, as hex, then resets. */
.include "common.inc"
.code64
.globl _start
_start:
    lea l_kvm(%rip), %rbx
    call puts
    mov $0x40000001, %eax
    xor %ecx, %ecx
    cpuid
    mov %rax, %rdi
    mov $8, %ecx
    call puthex
    lea l_extra(%rip), %rbx
    call puts
    mov $0x400000f0, %eax
    xor %ecx, %ecx
    cpuid
    mov %rbx, %rdi
    mov $8, %ecx
    call puthex
    lea l_star(%rip), %rbx
    call puts
    mov $0xc0000081, %ecx
    rdmsr
    shl $32, %rdx
    mov %eax, %eax
    or %rdx, %rax
    mov %rax, %rdi
    mov $16, %ecx
    call puthex
    mov $RESET_CPU, %al
    out %al, $I8042_CMD
1:  hlt
    jmp 1b
/* puts: print the NUL-terminated string at rbx */
puts:
    mov $COM1, %dx
2:  movb (%rbx), %al
    test %al, %al
    jz 3f
    out %al, %dx
    inc %rbx
    jmp 2b
3:  ret
/* puthex: print the low rcx hex digits of rdi, then a newline */
puthex:
    mov $COM1, %dx
    mov %ecx, %esi
    shl $2, %esi
4:  sub $4, %esi
    mov %rdi, %rax
    mov %esi, %ecx
    shr %cl, %rax
    and $0xf, %eax
    cmp $10, %eax
    jb 5f
    add $('a' - 10 - '0'), %eax
5:  add $'0', %eax
    out %al, %dx
    test %esi, %esi
    jnz 4b
    mov $'\n', %al
    out %al, %dx
    ret
l_kvm:   .asciz "cairn-tiny: kvm-features="
l_extra: .asciz "cairn-tiny: leaf-400000f0-ebx="
l_star:  .asciz "cairn-tiny: star="
