void arch_x86_placeholder(void) {}
