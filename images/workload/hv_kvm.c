/*
 * The Linux KVM backend of slat-workload: /dev/kvm, one memslot per --slot
 * (anonymous memory, 2 MiB aligned and MADV_HUGEPAGE for "huge"), one vCPU,
 * KVM_RUN until arch_handle_exit() reports the final exit, and each slot
 * page's L1 frame from /proc/self/pagemap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define HUGE_2M (2ULL << 20)
#define RUNS_PER_LINE 64
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_PRESENT (1ULL << 63)

int kvm_fd = -1;
static int pagemap_fd = -1;

void hv_open(void)
{
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm: %s", strerror(errno));
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		die("open /proc/self/pagemap: %s", strerror(errno));
}

void hv_check_config(const struct config *cfg)
{
	(void)cfg;              /* KVM takes every slot flag and MMIO touches */
}

static void map_slot(struct vm *vm, const struct config *cfg, int i)
{
	const struct slot *s = &cfg->slots[i];
	size_t align = s->flags & SLOT_HUGE ? HUGE_2M : PAGE_SIZE;
	size_t len = s->size + (align > PAGE_SIZE ? align : 0);
	uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (base == MAP_FAILED)
		die("mmap of %llu bytes: %s", (unsigned long long)len, strerror(errno));
	vm->map_base[i] = base;
	vm->map_len[i] = len;
	vm->hva[i] = (uint8_t *)(((uintptr_t)base + align - 1) & ~(uintptr_t)(align - 1));
	madvise(vm->hva[i], s->size, s->flags & SLOT_HUGE ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	tag_slot(vm, cfg, i);
}

static void set_slot(struct vm *vm, const struct config *cfg, int i)
{
	const struct slot *s = &cfg->slots[i];
	struct kvm_userspace_memory_region r = {
		.slot = (uint32_t)i,
		.flags = (s->flags & SLOT_RO ? KVM_MEM_READONLY : 0) |
			 (s->flags & SLOT_LOG ? KVM_MEM_LOG_DIRTY_PAGES : 0),
		.guest_phys_addr = s->gpa,
		.memory_size = s->size,
		.userspace_addr = (uintptr_t)vm->hva[i],
	};

	if (ioctl(vm->vmfd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		die("vm %d: KVM_SET_USER_MEMORY_REGION slot %d: %s", vm->index, i, strerror(errno));
}

void hv_create_vm(struct vm *vm, const struct config *cfg)
{
	int run_size;

	vm->vmfd = ioctl(kvm_fd, KVM_CREATE_VM, arch_vm_type(cfg));
	if (vm->vmfd < 0)
		die("vm %d: KVM_CREATE_VM: %s", vm->index, strerror(errno));
	for (int i = 0; i < cfg->nslots; i++) {
		map_slot(vm, cfg, i);
		set_slot(vm, cfg, i);
	}
	arch_load_guest(vm, cfg);
	vm->vcpufd = ioctl(vm->vmfd, KVM_CREATE_VCPU, 0);
	if (vm->vcpufd < 0)
		die("vm %d: KVM_CREATE_VCPU: %s", vm->index, strerror(errno));
	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		die("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	vm->run_size = (size_t)run_size;
	vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpufd, 0);
	if (vm->run == MAP_FAILED)
		die("vm %d: mmap kvm_run: %s", vm->index, strerror(errno));
	arch_vcpu_init(vm, cfg);
}

void hv_run(struct vm *vm, const struct config *cfg)
{
	long budget = 4L * cfg->ntouches + 64;

	while (budget-- > 0) {
		if (ioctl(vm->vcpufd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("vm %d: KVM_RUN: %s", vm->index, strerror(errno));
		}
		if (arch_handle_exit(vm, cfg))
			return;
	}
	die("vm %d: no final exit after %ld KVM_RUN calls", vm->index, 4L * cfg->ntouches + 64);
}

void hv_destroy_vm(struct vm *vm, const struct config *cfg)
{
	munmap(vm->run, vm->run_size);
	close(vm->vcpufd);
	close(vm->vmfd);
	for (int i = 0; i < cfg->nslots; i++)
		munmap(vm->map_base[i], vm->map_len[i]);
}

static void flush_runs(int vm, int slot, uint64_t (*runs)[3], int n)
{
	char line[RUNS_PER_LINE * 64 + 128];
	size_t len = 0;

	for (int i = 0; i < n; i++)
		len += (size_t)snprintf(line + len, sizeof(line) - len, "%s[%llu,%lld,%llu]",
					i ? "," : "", (unsigned long long)runs[i][0],
					(long long)runs[i][1], (unsigned long long)runs[i][2]);
	emit("{\"event\":\"pagemap\",\"vm\":%d,\"slot\":%d,\"runs\":[%s]}", vm, slot, line);
}

/* Runs of consecutive GPA pages with consecutive PFNs; -1 for a page not present. */
void kvm_report_pagemap(int vm, int slot, uint64_t gpa, const uint8_t *hva, uint64_t size)
{
	uint64_t runs[RUNS_PER_LINE][3];
	int n = 0;

	for (uint64_t off = 0; off < size; off += PAGE_SIZE) {
		uint64_t entry, va = (uintptr_t)hva + off;
		int64_t pfn;

		if (pread(pagemap_fd, &entry, 8, (off_t)(va / PAGE_SIZE * 8)) != 8)
			die("pread /proc/self/pagemap: %s", strerror(errno));
		pfn = entry & PM_PRESENT ? (int64_t)(entry & PM_PFN_MASK) : -1;
		if (n && (int64_t)runs[n - 1][1] != -1 && pfn != -1 &&
		    (int64_t)(runs[n - 1][1] + runs[n - 1][2]) == pfn) {
			runs[n - 1][2]++;
			continue;
		}
		if (n && (int64_t)runs[n - 1][1] == -1 && pfn == -1) {
			runs[n - 1][2]++;
			continue;
		}
		if (n == RUNS_PER_LINE) {
			flush_runs(vm, slot, runs, n);
			n = 0;
		}
		runs[n][0] = gpa + off;
		runs[n][1] = (uint64_t)pfn;
		runs[n][2] = 1;
		n++;
	}
	flush_runs(vm, slot, runs, n);
}

void hv_report_memory(const struct vm *vm, const struct config *cfg)
{
	for (int i = 0; i < cfg->nslots; i++)
		kvm_report_pagemap(vm->index, i, cfg->slots[i].gpa, vm->hva[i], cfg->slots[i].size);
}

const char *hv_vm_name(const struct vm *vm)
{
	(void)vm;               /* KVM VMs have no names */
	return NULL;
}
