/*
 * slat-workload: create KVM VMs with given memory slots, let one vCPU per VM
 * touch given guest-physical addresses, report where every slot page lives in
 * L1 physical memory (/proc/self/pagemap), then hold the VMs alive until a
 * line arrives on stdin.  Report lines: "@@SLAT {json}" on stdout.
 *
 * main.c is architecture independent; arch_<arch>.c generates the guest code,
 * sets up the vCPU and handles exits (the functions named arch_* below).
 */
#ifndef SLAT_WORKLOAD_H
#define SLAT_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <linux/kvm.h>

#define PAGE_SIZE   4096ULL
#define MAX_SLOTS   32
#define MAX_TOUCHES 4096
#define MAX_VMS     64
#define MAX_EXITS   256
#define MAX_CODE    (64 * 1024)

/* Each slot page holds its own GPA as a little-endian u64 at this offset. */
#define TAG_OFFSET  0xff8
/* A "w" touch stores this u32 at the target: the bytes "SLAT" in memory. */
#define WRITE_MARKER 0x54414c53u

enum slot_flag { SLOT_RO = 1, SLOT_LOG = 2, SLOT_HUGE = 4 };

struct slot {
	uint64_t gpa, size;
	unsigned flags;
};

struct touch {
	uint64_t gpa;
	char access;            /* 'r', 'w' or 'x' */
};

struct config {
	int vms, threads, cycles, ipa_bits;
	int hold;		/* 0 never, 1 after every cycle, 2 after the last */
	int nslots, ntouches;
	struct slot slots[MAX_SLOTS];
	struct touch touches[MAX_TOUCHES];
	int have_code;
	uint64_t code_gpa;      /* first page of the guest code */
	size_t code_len;        /* bytes of generated code */
	uint8_t code[MAX_CODE];
};

struct exit_rec {
	const char *reason;     /* "hlt", "io", "mmio", "system_event" */
	uint64_t addr;          /* MMIO GPA or I/O port */
	int write;
};

struct vm {
	int index, cycle;
	int vmfd, vcpufd;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *hva[MAX_SLOTS];        /* where each slot is mapped in this process */
	size_t map_len[MAX_SLOTS];
	uint8_t *map_base[MAX_SLOTS];
	struct exit_rec exits[MAX_EXITS];
	int nexits, lost_exits;
};

extern int kvm_fd;

/* main.c */
void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
uint8_t *gpa_to_hva(const struct vm *vm, const struct config *cfg, uint64_t gpa, size_t len);
const struct slot *slot_of(const struct config *cfg, uint64_t gpa);
void record_exit(struct vm *vm, const char *reason, uint64_t addr, int write);

/* arch_<arch>.c */
unsigned long arch_vm_type(const struct config *cfg);
uint64_t arch_touch_limit(const struct config *cfg);   /* touches and code below this GPA */
size_t arch_gen_code(const struct config *cfg, uint64_t code_gpa, uint8_t *buf, size_t cap);
void arch_prepare_memory(const struct vm *vm, const struct config *cfg);
void arch_vcpu_init(struct vm *vm, const struct config *cfg);
int arch_handle_exit(struct vm *vm, const struct config *cfg);  /* 1 when finished */

#endif
