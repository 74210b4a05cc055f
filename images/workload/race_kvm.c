/*
 * More vCPUs per VM, and teardown races, on Linux KVM.
 *
 * vCPU 0 is struct vm's own; vCPUs 1.. (--vcpus N) are created here after vCPU 0
 * ran, and run the same guest code once.  A race (--race MODE), per VM, after the
 * first hold: every vCPU runs the guest code in a loop (its registers reset by
 * arch_vcpu_init after each final exit), while this thread waits a delay drawn
 * from [--race-delay MIN:MAX] microseconds (xorshift64* seeded by --race-seed, the
 * VM and the cycle) and then, on slot --race-slot:
 *
 *   delete_slot  KVM_SET_USER_MEMORY_REGION with memory_size 0
 *   move_slot    KVM_SET_USER_MEMORY_REGION at --race-to (KVM_MR_MOVE)
 *   close_vm     the VM's and vCPUs' descriptors replaced by /dev/null (dup2, so no
 *                number is reused), then the kvm_run mappings and slots unmapped
 *                after the vCPUs stopped: the last reference destroys the VM
 *   munmap       the backing replaced by a PROT_NONE mapping (mmap MAP_FIXED: the
 *                pages are unmapped and freed, with no hole another mmap could take)
 *   dontneed     madvise(MADV_DONTNEED) on the backing
 *   mprotect     mprotect(PROT_READ) on the backing
 *
 * The vCPUs go on for --race-after microseconds, are kicked out (immediate_exit and
 * SIGUSR1) and joined; then each that still can runs the guest code once more (so that
 * none holds a root KVM invalidated while it sat out).  A vCPU ends on its own when KVM_RUN fails (EFAULT once its
 * memory is gone, ENOTTY on /dev/null) or exits in a way the guest code never does.
 * Then the report: a "race" event (what happened when, in microseconds since the
 * vCPUs started), and the VM's state after it: "restate", its slots ("slot_gone"
 * for a range it lost; a read-only backing is reported as "ro"), its pagemap; or,
 * for close_vm, "destroyed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

const char *const race_modes[] = {
	"none", "delete_slot", "move_slot", "close_vm", "munmap", "dontneed", "mprotect",
};

struct vcpu_ex {
	int fd;
	struct kvm_run *run;
	size_t run_size;
};

/* vCPUs 1.. of each VM (index = vm->index), and VMs their race destroyed */
static struct vcpu_ex extra[MAX_VMS][MAX_VCPUS];
static int gone[MAX_VMS];

/* ---- more vCPUs ----------------------------------------------------------- */

/* A copy of *vm that runs vCPU k (0: the VM's own). */
static struct vm *view_of(const struct vm *vm, int k)
{
	struct vm *v = malloc(sizeof(*v));

	if (!v)
		die("out of memory");
	*v = *vm;
	v->nexits = v->lost_exits = 0;
	if (k) {
		v->vcpufd = extra[vm->index][k].fd;
		v->run = extra[vm->index][k].run;
		v->run_size = extra[vm->index][k].run_size;
	}
	return v;
}

static void create_vcpu(struct vm *vm, const struct config *cfg, int k)
{
	struct vcpu_ex *e = &extra[vm->index][k];
	struct vm *v;

	e->fd = ioctl(vm->vmfd, KVM_CREATE_VCPU, k);
	if (e->fd < 0)
		die("vm %d: KVM_CREATE_VCPU %d: %s", vm->index, k, strerror(errno));
	e->run_size = vm->run_size;
	e->run = mmap(NULL, e->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, e->fd, 0);
	if (e->run == MAP_FAILED)
		die("vm %d: mmap kvm_run of vCPU %d: %s", vm->index, k, strerror(errno));
	v = view_of(vm, k);
	arch_vcpu_init(v, cfg);
	hv_run(v, cfg);
	free(v);
}

void vcpus_extra(struct vm *vm, const struct config *cfg)
{
	for (int k = 1; k < cfg->vcpus; k++)
		create_vcpu(vm, cfg, k);
}

void vcpus_drop(struct vm *vm, const struct config *cfg)
{
	for (int k = 1; k < cfg->vcpus; k++) {
		struct vcpu_ex *e = &extra[vm->index][k];

		if (e->run) {
			munmap(e->run, e->run_size);
			close(e->fd);
		}
		memset(e, 0, sizeof(*e));
	}
}

int race_gone(const struct vm *vm)
{
	return gone[vm->index];
}

/* ---- time and draws ------------------------------------------------------- */

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* The delay of this VM's race in this cycle: uniform in [min, max]. */
static uint64_t draw_delay(const struct race *r, const struct vm *vm)
{
	uint64_t x = splitmix(r->seed ^ splitmix((uint64_t)vm->index * 1000003 +
						 (uint64_t)vm->cycle * 7919 + 1));

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	x *= 0x2545f4914f6cdd1dULL;
	return r->delay_min + x % (r->delay_max - r->delay_min + 1);
}

/* ---- the racing vCPUs ----------------------------------------------------- */

struct racer {
	struct vm *view;
	const struct config *cfg;
	pthread_t tid;
	volatile int *stop;
	pthread_rwlock_t *lock;     /* rewinds (read) against close_vm (write) */
	volatile int *closed;
	uint64_t t0, end_us;
	long rounds;
	int ended;
	char why[32];
	char settled[32];           /* how its run after the race ended */
};

static void kick(int sig)
{
	(void)sig;          /* only to interrupt KVM_RUN */
}

static int known_exit(const struct kvm_run *run)
{
	switch (run->exit_reason) {
	case KVM_EXIT_HLT: case KVM_EXIT_IO: case KVM_EXIT_MMIO: case KVM_EXIT_SYSTEM_EVENT:
		return 1;
	}
	return 0;
}

static const char *errno_word(int e)
{
	switch (e) {
	case EFAULT: return "efault";
	case ENOTTY: return "enotty";
	case EBADF: return "ebadf";
	case EINVAL: return "einval";
	case EIO: return "eio";
	case ENOMEM: return "enomem";
	case EPERM: return "eperm";
	case EHWPOISON: return "ehwpoison";
	}
	return "errno";
}

/* After a final exit: start the guest code again, unless the VM was closed. */
static int rewind_vcpu(struct racer *r)
{
	int ok;

	pthread_rwlock_rdlock(r->lock);
	ok = !*r->closed;
	if (ok)
		arch_vcpu_init(r->view, r->cfg);
	pthread_rwlock_unlock(r->lock);
	return ok;
}

static void end_vcpu(struct racer *r, const char *why)
{
	snprintf(r->why, sizeof(r->why), "%s", why);
	r->end_us = now_us() - r->t0;
	__atomic_store_n(&r->ended, 1, __ATOMIC_RELEASE);
}

static void *vcpu_loop(void *arg)
{
	struct racer *r = arg;
	char why[32];

	while (!__atomic_load_n(r->stop, __ATOMIC_ACQUIRE)) {
		if (ioctl(r->view->vcpufd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			end_vcpu(r, errno_word(errno));
			return NULL;
		}
		if (!known_exit(r->view->run)) {
			snprintf(why, sizeof(why), "exit %u", r->view->run->exit_reason);
			end_vcpu(r, why);
			return NULL;
		}
		if (!arch_handle_exit(r->view, r->cfg))
			continue;
		r->rounds++;
		if (!rewind_vcpu(r)) {
			end_vcpu(r, "closed");
			return NULL;
		}
	}
	end_vcpu(r, "stopped");
	return NULL;
}

/* Stop every vCPU (immediate_exit for the next KVM_RUN, a signal for the current). */
static void stop_all(struct racer *rs, int n, volatile int *stop)
{
	__atomic_store_n(stop, 1, __ATOMIC_RELEASE);
	for (int tries = 0; tries < 10000; tries++) {
		int left = 0;

		for (int k = 0; k < n; k++) {
			if (__atomic_load_n(&rs[k].ended, __ATOMIC_ACQUIRE))
				continue;
			left++;
			rs[k].view->run->immediate_exit = 1;
			pthread_kill(rs[k].tid, SIGUSR1);
		}
		if (!left)
			break;
		sleep_us(1000);
	}
	for (int k = 0; k < n; k++)
		pthread_join(rs[k].tid, NULL);
}

/*
 * After the race every vCPU that still can runs the guest code once more, so that each
 * has entered the guest since the action: a vCPU that sat out the end of the race would
 * still hold a root KVM invalidated meanwhile (x86 reloads its root on guest entry).
 */
static void settle_vcpu(struct racer *r)
{
	long budget = 4L * r->cfg->ntouches + 64;
	const char *how = "budget";

	if (*r->closed) {
		snprintf(r->settled, sizeof(r->settled), "closed");
		return;
	}
	r->view->run->immediate_exit = 0;
	arch_vcpu_init(r->view, r->cfg);
	while (budget-- > 0) {
		if (ioctl(r->view->vcpufd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			how = errno_word(errno);
			break;
		}
		if (!known_exit(r->view->run)) {
			how = "exit";
			break;
		}
		if (arch_handle_exit(r->view, r->cfg)) {
			how = "done";
			break;
		}
	}
	snprintf(r->settled, sizeof(r->settled), "%s", how);
}

/* ---- the racer's actions -------------------------------------------------- */

static int set_region(const struct vm *vm, const struct config *cfg, uint64_t gpa,
		      uint64_t size)
{
	const struct slot *s = &cfg->slots[cfg->race.slot];
	struct kvm_userspace_memory_region r = {
		.slot = (uint32_t)cfg->race.slot,
		.flags = (s->flags & SLOT_RO ? KVM_MEM_READONLY : 0) |
			 (s->flags & SLOT_LOG ? KVM_MEM_LOG_DIRTY_PAGES : 0),
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uintptr_t)vm->hva[cfg->race.slot],
	};

	return ioctl(vm->vmfd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? errno : 0;
}

static int close_vm(struct vm *vm, struct racer *rs, int n, volatile int *closed,
		    pthread_rwlock_t *lock)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC), err = 0;

	if (null < 0)
		return errno;
	pthread_rwlock_wrlock(lock);
	*closed = 1;
	if (dup2(null, vm->vmfd) < 0)
		err = errno;
	for (int k = 0; k < n; k++)
		if (dup2(null, rs[k].view->vcpufd) < 0)
			err = errno;
	pthread_rwlock_unlock(lock);
	close(null);
	return err;
}

static int act(struct vm *vm, const struct config *cfg, struct racer *rs, int n,
	       volatile int *closed, pthread_rwlock_t *lock)
{
	const struct slot *s = &cfg->slots[cfg->race.slot];
	uint8_t *hva = vm->hva[cfg->race.slot];

	switch (cfg->race.mode) {
	case RACE_DELETE_SLOT:
		return set_region(vm, cfg, s->gpa, 0);
	case RACE_MOVE_SLOT:
		return set_region(vm, cfg, cfg->race.to, s->size);
	case RACE_CLOSE_VM:
		return close_vm(vm, rs, n, closed, lock);
	case RACE_MUNMAP:
		return mmap(hva, s->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
			    MAP_NORESERVE, -1, 0) == MAP_FAILED ? errno : 0;
	case RACE_DONTNEED:
		return madvise(hva, s->size, MADV_DONTNEED) < 0 ? errno : 0;
	case RACE_MPROTECT:
		return mprotect(hva, s->size, PROT_READ) < 0 ? errno : 0;
	}
	return EINVAL;
}

/* ---- the report ------------------------------------------------------------ */

static void report_race(const struct vm *vm, const struct config *cfg, struct racer *rs, int n,
			uint64_t delay, uint64_t at, uint64_t took, uint64_t end, int err)
{
	char vcpus[MAX_VCPUS * 120];
	size_t len = 0;

	for (int k = 0; k < n; k++)
		len += (size_t)snprintf(vcpus + len, sizeof(vcpus) - len,
					"%s{\"rounds\":%ld,\"end\":\"%s\",\"at_us\":%llu,"
					"\"settled\":\"%s\"}", k ? "," : "", rs[k].rounds, rs[k].why,
					(unsigned long long)rs[k].end_us, rs[k].settled);
	emit("{\"event\":\"race\",\"vm\":%d,\"cycle\":%d,\"mode\":\"%s\",\"slot\":%d,"
	     "\"delay_us\":%llu,\"at_us\":%llu,\"took_us\":%llu,\"end_us\":%llu,\"errno\":%d,"
	     "\"vcpus\":[%s]}", vm->index, vm->cycle, race_modes[cfg->race.mode],
	     cfg->race.slot, (unsigned long long)delay, (unsigned long long)at,
	     (unsigned long long)took, (unsigned long long)end, err, vcpus);
}

static const char *flags_of(unsigned flags)
{
	static const char *names[] = { "", "ro", "log", "ro+log", "huge", "ro+huge",
				       "log+huge", "ro+log+huge" };
	return names[flags & 7];
}

static void emit_slot(const struct vm *vm, int i, uint64_t gpa, uint64_t size, unsigned flags,
		      const char *event)
{
	emit("{\"event\":\"%s\",\"vm\":%d,\"slot\":%d,\"gpa\":%llu,\"size\":%llu,\"hva\":%llu,"
	     "\"flags\":\"%s\"}", event, vm->index, i, (unsigned long long)gpa,
	     (unsigned long long)size, (unsigned long long)(uintptr_t)vm->hva[i], flags_of(flags));
}

/* The VM after its race: its slots as KVM now has them, and their pagemap. */
static void report_state(const struct vm *vm, const struct config *cfg)
{
	const struct race *r = &cfg->race;

	emit("{\"event\":\"restate\",\"vm\":%d}", vm->index);
	for (int i = 0; i < cfg->nslots; i++) {
		const struct slot *s = &cfg->slots[i];
		uint64_t gpa = s->gpa;
		unsigned flags = s->flags;

		if (i == r->slot && (r->mode == RACE_DELETE_SLOT || r->mode == RACE_MOVE_SLOT))
			emit_slot(vm, i, s->gpa, s->size, s->flags, "slot_gone");
		if (i == r->slot && r->mode == RACE_DELETE_SLOT)
			continue;
		if (i == r->slot && r->mode == RACE_MOVE_SLOT)
			gpa = r->to;
		if (i == r->slot && r->mode == RACE_MPROTECT)
			flags |= SLOT_RO;       /* KVM can only map it read-only now */
		emit_slot(vm, i, gpa, s->size, flags, "slot");
	}
	for (int i = 0; i < cfg->nslots; i++)
		if (!(i == r->slot && r->mode == RACE_DELETE_SLOT))
			kvm_report_pagemap(vm->index, i, i == r->slot && r->mode == RACE_MOVE_SLOT ?
					   r->to : cfg->slots[i].gpa, vm->hva[i],
					   cfg->slots[i].size);
}

/* close_vm: drop the last references (the kvm_run mappings), then the memory. */
static void finish_closed(struct vm *vm, const struct config *cfg)
{
	munmap(vm->run, vm->run_size);
	close(vm->vcpufd);
	vcpus_drop(vm, cfg);
	close(vm->vmfd);
	for (int i = 0; i < cfg->nslots; i++)
		munmap(vm->map_base[i], vm->map_len[i]);
	gone[vm->index] = 1;
	emit("{\"event\":\"destroyed\",\"vm\":%d}", vm->index);
}

/* ---- one VM's race --------------------------------------------------------- */

static void install_kick(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick;           /* no SA_RESTART: KVM_RUN returns EINTR */
	if (sigaction(SIGUSR1, &sa, NULL) < 0)
		die("sigaction: %s", strerror(errno));
}

static void start_vcpus(struct vm *vm, const struct config *cfg, struct racer *rs,
			volatile int *stop, volatile int *closed, pthread_rwlock_t *lock)
{
	uint64_t t0 = now_us();

	for (int k = 0; k < cfg->vcpus; k++) {
		rs[k] = (struct racer){ .view = view_of(vm, k), .cfg = cfg, .stop = stop,
					.lock = lock, .closed = closed, .t0 = t0 };
		rs[k].view->run->immediate_exit = 0;
		arch_vcpu_init(rs[k].view, cfg);        /* from the start of the code */
	}
	for (int k = 0; k < cfg->vcpus; k++)
		if (pthread_create(&rs[k].tid, NULL, vcpu_loop, &rs[k]))
			die("pthread_create failed");
}

void race_vm(struct vm *vm, const struct config *cfg)
{
	struct racer rs[MAX_VCPUS];
	volatile int stop = 0, closed = 0;
	pthread_rwlock_t lock = PTHREAD_RWLOCK_INITIALIZER;
	uint64_t delay = draw_delay(&cfg->race, vm), t0, at, took, end;
	int err, n = cfg->vcpus;

	install_kick();
	start_vcpus(vm, cfg, rs, &stop, &closed, &lock);
	t0 = rs[0].t0;
	sleep_us(delay);
	at = now_us() - t0;
	err = act(vm, cfg, rs, n, &closed, &lock);
	took = now_us() - t0 - at;
	sleep_us(cfg->race.after);
	stop_all(rs, n, &stop);
	end = now_us() - t0;
	for (int k = 0; k < n; k++)
		settle_vcpu(&rs[k]);
	report_race(vm, cfg, rs, n, delay, at, took, end, err);
	for (int k = 0; k < n; k++)
		free(rs[k].view);
	if (cfg->race.mode == RACE_CLOSE_VM)
		finish_closed(vm, cfg);
	else
		report_state(vm, cfg);
}
