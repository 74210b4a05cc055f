/*
 * slat-workload [--vms N] [--threads] [--cycles N] [--no-hold|--hold-last] [--ipa-bits N]
 *               [--code GPA] --slot GPA:SIZE[:FLAGS] ... --touch GPA:ACCESS ...
 *
 * See docs/architecture.md, "The workload", for the report lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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
static struct config cfg;
static struct vm vms[MAX_VMS];
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void vemit(const char *fmt, va_list ap)
{
	pthread_mutex_lock(&out_lock);
	fputs("@@SLAT ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

void emit(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vemit(fmt, ap);
	va_end(ap);
}

void die(const char *fmt, ...)
{
	char msg[512], *p;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (p = msg; *p; p++)          /* keep the JSON string trivially valid */
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			*p = '\'';
	emit("{\"event\":\"error\",\"msg\":\"%s\"}", msg);
	exit(1);
}

const struct slot *slot_of(const struct config *c, uint64_t gpa)
{
	for (int i = 0; i < c->nslots; i++)
		if (gpa >= c->slots[i].gpa && gpa - c->slots[i].gpa < c->slots[i].size)
			return &c->slots[i];
	return NULL;
}

uint8_t *gpa_to_hva(const struct vm *vm, const struct config *c, uint64_t gpa, size_t len)
{
	const struct slot *s = slot_of(c, gpa);

	if (!s || gpa + len - s->gpa > s->size)
		return NULL;
	return vm->hva[s - c->slots] + (gpa - s->gpa);
}

void record_exit(struct vm *vm, const char *reason, uint64_t addr, int write)
{
	if (vm->nexits == MAX_EXITS) {
		vm->lost_exits++;
		return;
	}
	vm->exits[vm->nexits++] = (struct exit_rec){ reason, addr, write };
}

/* ---- arguments ---------------------------------------------------------- */

static uint64_t parse_num(const char *s, char **end, const char *what)
{
	uint64_t v;

	errno = 0;
	v = strtoull(s, end, 0);
	if (errno || *end == s)
		die("bad number in %s: %s", what, s);
	switch (**end) {
	case 'k': case 'K': v <<= 10; (*end)++; break;
	case 'm': case 'M': v <<= 20; (*end)++; break;
	case 'g': case 'G': v <<= 30; (*end)++; break;
	}
	return v;
}

static unsigned parse_flags(const char *s)
{
	unsigned flags = 0;
	char buf[128], *tok, *save;

	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, "+", &save); tok; tok = strtok_r(NULL, "+", &save)) {
		if (!strcmp(tok, "ro"))
			flags |= SLOT_RO;
		else if (!strcmp(tok, "log"))
			flags |= SLOT_LOG;
		else if (!strcmp(tok, "huge"))
			flags |= SLOT_HUGE;
		else
			die("unknown slot flag %s (ro, log, huge)", tok);
	}
	return flags;
}

static void add_slot(const char *arg)
{
	struct slot *s = &cfg.slots[cfg.nslots];
	char *end;

	if (cfg.nslots == MAX_SLOTS)
		die("more than %d slots", MAX_SLOTS);
	s->gpa = parse_num(arg, &end, "--slot");
	if (*end != ':')
		die("--slot wants GPA:SIZE[:FLAGS], got %s", arg);
	s->size = parse_num(end + 1, &end, "--slot");
	s->flags = 0;
	if (*end == ':')
		s->flags = parse_flags(end + 1);
	else if (*end)
		die("--slot wants GPA:SIZE[:FLAGS], got %s", arg);
	if (s->gpa % PAGE_SIZE || s->size % PAGE_SIZE || !s->size)
		die("slot %s: GPA and SIZE must be page aligned and SIZE non-zero", arg);
	cfg.nslots++;
}

static void add_touch(const char *arg)
{
	struct touch *t = &cfg.touches[cfg.ntouches];
	char *end;

	if (cfg.ntouches == MAX_TOUCHES)
		die("more than %d touches", MAX_TOUCHES);
	t->gpa = parse_num(arg, &end, "--touch");
	if (*end != ':' || !strchr("rwx", end[1]) || !end[1] || end[2])
		die("--touch wants GPA:r|w|x, got %s", arg);
	t->access = end[1];
	if ((t->gpa & (PAGE_SIZE - 1)) > PAGE_SIZE - 4)
		die("touch %s crosses a page boundary", arg);
	cfg.ntouches++;
}

static int parse_count(const char *s, const char *what, int max)
{
	char *end;
	uint64_t v = parse_num(s, &end, what);

	if (*end || v < 1 || v > (uint64_t)max)
		die("%s must be 1..%d", what, max);
	return (int)v;
}

static void parse_args(int argc, char **argv)
{
	cfg.vms = cfg.cycles = cfg.hold = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int takes = !strcmp(a, "--vms") || !strcmp(a, "--cycles") ||
			!strcmp(a, "--slot") || !strcmp(a, "--touch") ||
			!strcmp(a, "--ipa-bits") || !strcmp(a, "--code");

		if (takes && !v)
			die("%s needs a value", a);
		if (!strcmp(a, "--vms"))
			cfg.vms = parse_count(v, a, MAX_VMS);
		else if (!strcmp(a, "--cycles"))
			cfg.cycles = parse_count(v, a, 1000000);
		else if (!strcmp(a, "--ipa-bits"))
			cfg.ipa_bits = parse_count(v, a, 64);
		else if (!strcmp(a, "--slot"))
			add_slot(v);
		else if (!strcmp(a, "--touch"))
			add_touch(v);
		else if (!strcmp(a, "--code")) {
			char *end;
			cfg.code_gpa = parse_num(v, &end, a);
			cfg.have_code = 1;
		} else if (!strcmp(a, "--threads"))
			cfg.threads = 1;
		else if (!strcmp(a, "--no-hold"))
			cfg.hold = 0;
		else if (!strcmp(a, "--hold-last"))
			cfg.hold = 2;
		else
			die("unknown argument %s", a);
		i += takes;
	}
}

/* ---- checks and the code pages ------------------------------------------ */

static void check_config(void)
{
	uint64_t limit = arch_touch_limit(&cfg);

	if (!cfg.nslots)
		die("no --slot given");
	for (int i = 0; i < cfg.nslots; i++)
		for (int j = 0; j < i; j++)
			if (cfg.slots[i].gpa < cfg.slots[j].gpa + cfg.slots[j].size &&
			    cfg.slots[j].gpa < cfg.slots[i].gpa + cfg.slots[i].size)
				die("slots %d and %d overlap", j, i);
	for (int i = 0; i < cfg.ntouches; i++) {
		const struct touch *t = &cfg.touches[i];
		const struct slot *s = slot_of(&cfg, t->gpa);

		if (t->gpa >= limit)
			die("touch 0x%llx is beyond 0x%llx, which the guest cannot reach",
			    (unsigned long long)t->gpa, (unsigned long long)limit);
		if (t->access == 'x' && !s)
			die("x touch 0x%llx is outside every slot", (unsigned long long)t->gpa);
		for (int j = 0; j < cfg.ntouches; j++)
			if (t->access == 'x' && cfg.touches[j].access == 'w' &&
			    cfg.touches[j].gpa < t->gpa + 8 && t->gpa < cfg.touches[j].gpa + 4)
				die("w touch 0x%llx overwrites the x stub at 0x%llx",
				    (unsigned long long)cfg.touches[j].gpa,
				    (unsigned long long)t->gpa);
	}
}

static int page_is_touched(uint64_t page)
{
	for (int i = 0; i < cfg.ntouches; i++)
		if ((cfg.touches[i].gpa & ~(PAGE_SIZE - 1)) == page)
			return 1;
	return 0;
}

/* A run of npages free pages inside one slot; writable slots first. */
static int find_code_pages(uint64_t npages, uint64_t *out)
{
	uint64_t limit = arch_touch_limit(&cfg);

	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < cfg.nslots; i++) {
			const struct slot *s = &cfg.slots[i];
			uint64_t run = 0;

			if (!!(s->flags & SLOT_RO) != pass)
				continue;
			for (uint64_t g = s->gpa; g < s->gpa + s->size && g < limit; g += PAGE_SIZE) {
				run = page_is_touched(g) ? 0 : run + 1;
				if (run == npages) {
					*out = g - (npages - 1) * PAGE_SIZE;
					return 1;
				}
			}
		}
	return 0;
}

static void place_code(void)
{
	uint64_t npages;

	/* Code length does not depend on where it goes: generate once to size it. */
	cfg.code_len = arch_gen_code(&cfg, 0, cfg.code, sizeof(cfg.code));
	npages = (cfg.code_len + PAGE_SIZE - 1) / PAGE_SIZE;
	if (cfg.have_code) {
		if (cfg.code_gpa % PAGE_SIZE)
			die("--code must be page aligned");
		for (uint64_t p = 0; p < npages; p++)
			if (!slot_of(&cfg, cfg.code_gpa + p * PAGE_SIZE))
				die("--code 0x%llx: code pages must lie in a slot",
				    (unsigned long long)cfg.code_gpa);
	} else if (!find_code_pages(npages, &cfg.code_gpa)) {
		die("no %llu free page(s) for the guest code in any slot; give --code",
		    (unsigned long long)npages);
	}
	if (cfg.code_gpa + cfg.code_len > arch_touch_limit(&cfg))
		die("code at 0x%llx is out of the guest's reach",
		    (unsigned long long)cfg.code_gpa);
	cfg.code_len = arch_gen_code(&cfg, cfg.code_gpa, cfg.code, sizeof(cfg.code));
}

/* ---- one VM ------------------------------------------------------------- */

static void map_slot(struct vm *vm, int i)
{
	const struct slot *s = &cfg.slots[i];
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
	for (uint64_t off = 0; off < s->size; off += PAGE_SIZE) {   /* pre-fault + tag */
		uint64_t tag = s->gpa + off;
		memcpy(vm->hva[i] + off + TAG_OFFSET, &tag, sizeof(tag));
	}
}

static void set_slot(struct vm *vm, int i)
{
	const struct slot *s = &cfg.slots[i];
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

static void create_vm(struct vm *vm)
{
	int run_size;

	vm->vmfd = ioctl(kvm_fd, KVM_CREATE_VM, arch_vm_type(&cfg));
	if (vm->vmfd < 0)
		die("vm %d: KVM_CREATE_VM: %s", vm->index, strerror(errno));
	for (int i = 0; i < cfg.nslots; i++) {
		map_slot(vm, i);
		set_slot(vm, i);
	}
	memcpy(gpa_to_hva(vm, &cfg, cfg.code_gpa, cfg.code_len), cfg.code, cfg.code_len);
	arch_prepare_memory(vm, &cfg);
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
	arch_vcpu_init(vm, &cfg);
}

static void run_vm(struct vm *vm)
{
	long budget = 4L * cfg.ntouches + 64;

	while (budget-- > 0) {
		if (ioctl(vm->vcpufd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("vm %d: KVM_RUN: %s", vm->index, strerror(errno));
		}
		if (arch_handle_exit(vm, &cfg))
			return;
	}
	die("vm %d: no final exit after %ld KVM_RUN calls", vm->index, 4L * cfg.ntouches + 64);
}

/* The guest really stored the marker for every w touch into a writable slot. */
static void check_writes(const struct vm *vm)
{
	for (int i = 0; i < cfg.ntouches; i++) {
		const struct touch *t = &cfg.touches[i];
		const struct slot *s = slot_of(&cfg, t->gpa);
		uint32_t got;

		if (t->access != 'w' || !s || (s->flags & SLOT_RO))
			continue;
		memcpy(&got, gpa_to_hva(vm, &cfg, t->gpa, 4), 4);
		if (got != WRITE_MARKER)
			die("vm %d: w touch 0x%llx did not land (read 0x%x)", vm->index,
			    (unsigned long long)t->gpa, got);
	}
}

static void *vm_thread(void *arg)
{
	struct vm *vm = arg;

	create_vm(vm);
	run_vm(vm);
	check_writes(vm);
	return NULL;
}

static void destroy_vm(struct vm *vm)
{
	munmap(vm->run, vm->run_size);
	close(vm->vcpufd);
	close(vm->vmfd);
	for (int i = 0; i < cfg.nslots; i++)
		munmap(vm->map_base[i], vm->map_len[i]);
	emit("{\"event\":\"destroyed\",\"vm\":%d}", vm->index);
}

/* ---- report ------------------------------------------------------------- */

static const char *flag_string(unsigned flags)
{
	static const char *names[] = { "", "ro", "log", "ro+log", "huge", "ro+huge",
				       "log+huge", "ro+log+huge" };
	return names[flags & 7];
}

static void flush_runs(const struct vm *vm, int slot, uint64_t (*runs)[3], int n)
{
	char line[RUNS_PER_LINE * 64 + 128];
	size_t len = 0;

	for (int i = 0; i < n; i++)
		len += (size_t)snprintf(line + len, sizeof(line) - len, "%s[%llu,%lld,%llu]",
					i ? "," : "", (unsigned long long)runs[i][0],
					(long long)runs[i][1], (unsigned long long)runs[i][2]);
	emit("{\"event\":\"pagemap\",\"vm\":%d,\"slot\":%d,\"runs\":[%s]}", vm->index, slot, line);
}

/* Runs of consecutive GPA pages with consecutive PFNs; -1 for a page not present. */
static void report_pagemap(const struct vm *vm, int pagemap, int slot)
{
	const struct slot *s = &cfg.slots[slot];
	uint64_t runs[RUNS_PER_LINE][3];
	int n = 0;

	for (uint64_t off = 0; off < s->size; off += PAGE_SIZE) {
		uint64_t entry, va = (uintptr_t)vm->hva[slot] + off;
		int64_t pfn;

		if (pread(pagemap, &entry, 8, (off_t)(va / PAGE_SIZE * 8)) != 8)
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
		runs[n][0] = s->gpa + off;
		runs[n][1] = (uint64_t)pfn;
		runs[n][2] = 1;
		n++;
	}
	flush_runs(vm, slot, runs, n);
}

static void report_vm(const struct vm *vm, int pagemap)
{
	emit("{\"event\":\"vm\",\"vm\":%d,\"pid\":%d,\"cycle\":%d}", vm->index, getpid(), vm->cycle);
	for (int i = 0; i < cfg.nslots; i++)
		emit("{\"event\":\"slot\",\"vm\":%d,\"slot\":%d,\"gpa\":%llu,\"size\":%llu,"
		     "\"hva\":%llu,\"flags\":\"%s\"}", vm->index, i,
		     (unsigned long long)cfg.slots[i].gpa, (unsigned long long)cfg.slots[i].size,
		     (unsigned long long)(uintptr_t)vm->hva[i], flag_string(cfg.slots[i].flags));
	for (uint64_t g = cfg.code_gpa & ~(PAGE_SIZE - 1); g < cfg.code_gpa + cfg.code_len;
	     g += PAGE_SIZE)
		emit("{\"event\":\"code\",\"vm\":%d,\"gpa\":%llu}", vm->index, (unsigned long long)g);
	for (int i = 0; i < vm->nexits; i++) {
		const struct exit_rec *e = &vm->exits[i];

		if (!strcmp(e->reason, "hlt") || !strcmp(e->reason, "system_event"))
			emit("{\"event\":\"exit\",\"vm\":%d,\"reason\":\"%s\"}", vm->index, e->reason);
		else
			emit("{\"event\":\"exit\",\"vm\":%d,\"reason\":\"%s\",\"%s\":%llu,\"write\":%d}",
			     vm->index, e->reason, strcmp(e->reason, "io") ? "gpa" : "port",
			     (unsigned long long)e->addr, e->write);
	}
	if (vm->lost_exits)
		emit("{\"event\":\"exit\",\"vm\":%d,\"reason\":\"lost\",\"count\":%d}",
		     vm->index, vm->lost_exits);
	for (int i = 0; i < cfg.nslots; i++)
		report_pagemap(vm, pagemap, i);
}

/* ---- cycles ------------------------------------------------------------- */

static void run_all(int cycle)
{
	pthread_t tids[MAX_VMS];

	for (int v = 0; v < cfg.vms; v++) {
		memset(&vms[v], 0, sizeof(vms[v]));
		vms[v].index = v;
		vms[v].cycle = cycle;
	}
	for (int v = 0; v < cfg.vms; v++) {
		if (!cfg.threads) {
			vm_thread(&vms[v]);
			continue;
		}
		if (pthread_create(&tids[v], NULL, vm_thread, &vms[v]))
			die("pthread_create failed");
	}
	for (int v = 0; cfg.threads && v < cfg.vms; v++)
		pthread_join(tids[v], NULL);
}

static void hold(void)
{
	char line[256];

	emit("{\"event\":\"hold\"}");
	if (!fgets(line, sizeof(line), stdin) && ferror(stdin))
		die("reading stdin: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	int pagemap;

	parse_args(argc, argv);
	check_config();
	place_code();
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm: %s", strerror(errno));
	pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap < 0)
		die("open /proc/self/pagemap: %s", strerror(errno));
	for (int c = 0; c < cfg.cycles; c++) {
		run_all(c);
		for (int v = 0; v < cfg.vms; v++)
			report_vm(&vms[v], pagemap);
		if (cfg.hold == 1 || (cfg.hold == 2 && c == cfg.cycles - 1))
			hold();
		for (int v = 0; v < cfg.vms; v++)
			destroy_vm(&vms[v]);
	}
	emit("{\"event\":\"done\",\"status\":0}");
	return 0;
}
