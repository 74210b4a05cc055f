/*
 * slat-workload: create VMs with given memory slots, let one vCPU per VM
 * touch given guest-physical addresses, report where every slot page lives in
 * L1 physical memory (/proc/self/pagemap on Linux), then hold the VMs alive
 * until a line arrives on stdin.  Report lines: "@@SLAT {json}" on stdout.
 *
 * main.c is independent of architecture and hypervisor.  The hypervisor
 * backend (the hv_* functions below) is hv_kvm.c (Linux /dev/kvm),
 * hv_openbsd.c (OpenBSD /dev/vmm, built with -DSLAT_OPENBSD) or hv_freebsd.c
 * (FreeBSD bhyve through libvmmapi, built with -DSLAT_FREEBSD).  The guest
 * code comes from l2_x86.c (x86, shared by the backends) or arch_arm64.c;
 * arch_<arch>.c sets up a KVM vCPU and handles its exits.
 */
#ifndef SLAT_WORKLOAD_H
#define SLAT_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>
#if !defined(SLAT_OPENBSD) && !defined(SLAT_FREEBSD)
#define SLAT_KVM 1
#include <linux/kvm.h>
#endif

#define PAGE_SIZE   4096ULL
#define MAX_SLOTS   32
#define MAX_TOUCHES 4096
#define MAX_VMS     64
#define MAX_EXITS   256
#define MAX_CODE    (2 * 1024 * 1024)   /* guest code (x86 long mode: and its page tables) */
#define MAX_VCPUS   16

/* Each slot page holds its own GPA as a little-endian u64 at this offset. */
#define TAG_OFFSET  0xff8
/* A "w" touch stores this u32 at the target: the bytes "SLAT" in memory. */
#define WRITE_MARKER 0x54414c53u
/* The x86 guest ends with "out SLAT_PORT, al; hlt". */
#define SLAT_PORT   0x5a

enum slot_flag { SLOT_RO = 1, SLOT_LOG = 2, SLOT_HUGE = 4 };

struct slot {
	uint64_t gpa, size;
	unsigned flags;
};

struct touch {
	uint64_t gpa;
	char access;            /* 'r', 'w' or 'x' */
};

/* A teardown race (race_kvm.c): what the racer thread does while the vCPUs run. */
enum race_mode {
	RACE_NONE, RACE_DELETE_SLOT, RACE_MOVE_SLOT, RACE_CLOSE_VM, RACE_MUNMAP,
	RACE_DONTNEED, RACE_MPROTECT,
};

struct race {
	int mode;               /* enum race_mode */
	int slot;               /* the raced slot */
	uint64_t delay_min, delay_max;  /* microseconds before the action */
	uint64_t after;         /* microseconds the vCPUs go on after it */
	uint64_t to;            /* RACE_MOVE_SLOT: the new GPA */
	uint64_t seed;          /* the delays are drawn from it */
};

struct config {
	int vms, threads, cycles, ipa_bits;
	int vcpus;              /* per VM; vCPU 0 is struct vm's, the others race_kvm.c's */
	struct race race;
	int hold;		/* 0 never, 1 after every cycle, 2 after the last */
	int nslots, ntouches;
	struct slot slots[MAX_SLOTS];
	struct touch touches[MAX_TOUCHES];
	int have_code;
	uint64_t code_gpa;      /* first of the guest's own pages: its code, then (x86) its tables */
	size_t code_len;        /* bytes of those pages */
	uint8_t code[MAX_CODE];
};

struct exit_rec {
	const char *reason;     /* "hlt", "io", "mmio", "system_event" */
	uint64_t addr;          /* MMIO GPA or I/O port */
	int write;
};

struct vm {
	int index, cycle;
#if defined(SLAT_OPENBSD)
	uint32_t vm_id, vcpu_id;        /* from VMM_IOC_CREATE */
	void *exit;                     /* struct vm_exit, filled by VMM_IOC_RUN */
#elif defined(SLAT_FREEBSD)
	struct vmctx *ctx;              /* libvmmapi: /dev/vmm/<name> */
	struct vcpu *vcpu;              /* vCPU 0 */
	struct vm_exit *exit;           /* filled by vm_run() */
	char name[32];                  /* VM_MAX_NAMELEN: "slat-<pid>-<cycle>-<index>" */
#else
	int vmfd, vcpufd;
	struct kvm_run *run;
	size_t run_size;
#endif
	uint8_t *hva[MAX_SLOTS];        /* where each slot is mapped in this process */
	size_t map_len[MAX_SLOTS];
	uint8_t *map_base[MAX_SLOTS];
	struct exit_rec exits[MAX_EXITS];
	int nexits, lost_exits;
};

/* common.c: report lines, the fatal error, slot bookkeeping */
void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
uint8_t *gpa_to_hva(const struct vm *vm, const struct config *cfg, uint64_t gpa, size_t len);
const struct slot *slot_of(const struct config *cfg, uint64_t gpa);
void record_exit(struct vm *vm, const char *reason, uint64_t addr, int write);
void tag_slot(struct vm *vm, const struct config *cfg, int slot);  /* pre-fault + GPA tags */

/* hv_kvm.c, hv_openbsd.c or hv_freebsd.c: the hypervisor backend */
void hv_open(void);
void hv_check_config(const struct config *cfg);     /* refuse what the backend cannot do */
void hv_create_vm(struct vm *vm, const struct config *cfg);  /* VM, slots, vCPU, guest */
void hv_run(struct vm *vm, const struct config *cfg);        /* to the final exit */
void hv_report_memory(const struct vm *vm, const struct config *cfg);  /* pagemap events */
void hv_destroy_vm(struct vm *vm, const struct config *cfg);
const char *hv_vm_name(const struct vm *vm);  /* the VM's name where the VMM names it, or NULL */

/* the guest code: l2_x86.c or arch_arm64.c */
/* touches and code below this GPA; before the hypervisor is open, the architectural bound */
uint64_t arch_touch_limit(const struct config *cfg);
size_t arch_gen_code(const struct config *cfg, uint64_t code_gpa, uint8_t *buf, size_t cap);
void arch_load_guest(struct vm *vm, const struct config *cfg);   /* code + stubs */

/* x86: how the backend's vCPU starts (arch_x86.c on KVM, hv_openbsd.c, hv_freebsd.c):
 * 0 in 32-bit protected mode with paging off (GPAs below 4 GiB); else in long mode with
 * l2_x86.c's page tables, and this is the first GPA the guest cannot reach (before the
 * hypervisor is open: 2^52, what a PTE frame holds) */
uint64_t x86_long_mode_reach(void);
uint64_t l2_x86_entry(const struct config *cfg);       /* the vCPU's first RIP */
uint64_t l2_x86_cr3(const struct config *cfg);         /* long mode: the guest's PML4 */

/*
 * race_kvm.c (Linux KVM only): more vCPUs per VM and teardown races.  Declared weak:
 * a workload built without it (OpenBSD, FreeBSD) refuses --vcpus and --race.
 */
extern const char *const race_modes[] __attribute__((weak));   /* by enum race_mode */
void vcpus_extra(struct vm *vm, const struct config *cfg) __attribute__((weak));
void vcpus_drop(struct vm *vm, const struct config *cfg) __attribute__((weak));
void race_vm(struct vm *vm, const struct config *cfg) __attribute__((weak));
int race_gone(const struct vm *vm) __attribute__((weak));   /* destroyed by its race */

#ifdef SLAT_KVM
/* hv_kvm.c: one slot's pagemap runs, at a GPA of the caller's choosing */
void kvm_report_pagemap(int vm, int slot, uint64_t gpa, const uint8_t *hva, uint64_t size);

/* arch_<arch>.c: a KVM vCPU */
extern int kvm_fd;
unsigned long arch_vm_type(const struct config *cfg);
void arch_vcpu_init(struct vm *vm, const struct config *cfg);
int arch_handle_exit(struct vm *vm, const struct config *cfg);  /* 1 when finished */
#endif

#endif
