/*
 * slat-workload [--vms N] [--threads] [--cycles N] [--no-hold|--hold-last] [--ipa-bits N]
 *               [--code GPA] [--vcpus N] [--race MODE --race-slot I --race-delay MIN:MAX
 *               --race-after US --race-to GPA --race-seed S]
 *               --slot GPA:SIZE[:FLAGS] ... --touch GPA:ACCESS ...
 *
 * See docs/architecture.md, "The workload", for the report lines.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

static struct config cfg;
static struct vm vms[MAX_VMS];

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

static int parse_race_mode(const char *s)
{
	if (!race_vm)
		die("--race: this workload was built without teardown races");
	for (int m = RACE_DELETE_SLOT; m <= RACE_MPROTECT; m++)
		if (!strcmp(s, race_modes[m]))
			return m;
	die("unknown race mode %s", s);
}

/* --race-* arguments; 0 if *a* is none of them. */
static int parse_race_arg(const char *a, const char *v)
{
	char *end;

	if (!strcmp(a, "--race"))
		cfg.race.mode = parse_race_mode(v);
	else if (!strcmp(a, "--race-slot"))
		cfg.race.slot = (int)parse_num(v, &end, a);
	else if (!strcmp(a, "--race-delay")) {
		cfg.race.delay_min = parse_num(v, &end, a);
		cfg.race.delay_max = *end == ':' ? parse_num(end + 1, &end, a) : cfg.race.delay_min;
		if (cfg.race.delay_max < cfg.race.delay_min)
			die("--race-delay MIN:MAX with MIN above MAX");
	} else if (!strcmp(a, "--race-after"))
		cfg.race.after = parse_num(v, &end, a);
	else if (!strcmp(a, "--race-to"))
		cfg.race.to = parse_num(v, &end, a);
	else if (!strcmp(a, "--race-seed"))
		cfg.race.seed = parse_num(v, &end, a);
	else
		return 0;
	return 1;
}

static void parse_args(int argc, char **argv)
{
	cfg.vms = cfg.cycles = cfg.hold = cfg.vcpus = 1;
	cfg.race.after = 2000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int takes = !strcmp(a, "--vms") || !strcmp(a, "--cycles") ||
			!strcmp(a, "--slot") || !strcmp(a, "--touch") ||
			!strcmp(a, "--ipa-bits") || !strcmp(a, "--code") ||
			!strcmp(a, "--vcpus") || !strncmp(a, "--race", 6);

		if (takes && !v)
			die("%s needs a value", a);
		if (!strncmp(a, "--race", 6) && parse_race_arg(a, v))
			;
		else if (!strcmp(a, "--vcpus"))
			cfg.vcpus = parse_count(v, a, MAX_VCPUS);
		else if (!strcmp(a, "--vms"))
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

/* Touches and the guest's own pages below the reach the hypervisor gives the guest. */
static void check_reach(void)
{
	uint64_t limit = arch_touch_limit(&cfg);

	for (int i = 0; i < cfg.ntouches; i++)
		if (cfg.touches[i].gpa >= limit)
			die("touch 0x%llx is beyond 0x%llx, which the guest cannot reach",
			    (unsigned long long)cfg.touches[i].gpa, (unsigned long long)limit);
	if (cfg.code_gpa + cfg.code_len > limit)
		die("code at 0x%llx is out of the guest's reach",
		    (unsigned long long)cfg.code_gpa);
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

/* The race needs extra vCPUs support, a raced slot, and must leave the code alone. */
static void check_race(void)
{
	const struct slot *s = &cfg.slots[cfg.race.slot];

	if (cfg.vcpus > 1 && !vcpus_extra)
		die("--vcpus: this workload was built without more vCPUs per VM");
	if (!cfg.race.mode)
		return;
	if (cfg.race.slot < 0 || cfg.race.slot >= cfg.nslots)
		die("--race-slot %d: there are %d slots", cfg.race.slot, cfg.nslots);
	if (cfg.race.mode != RACE_CLOSE_VM && cfg.code_gpa < s->gpa + s->size &&
	    s->gpa < cfg.code_gpa + cfg.code_len)
		die("--race-slot %d holds the guest code at 0x%llx: race another slot",
		    cfg.race.slot, (unsigned long long)cfg.code_gpa);
	if (cfg.race.mode == RACE_MOVE_SLOT && cfg.race.to % PAGE_SIZE)
		die("--race-to must be page aligned");
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

	hv_create_vm(vm, &cfg);
	hv_run(vm, &cfg);
	check_writes(vm);
	if (cfg.vcpus > 1)
		vcpus_extra(vm, &cfg);
	return NULL;
}

static void *race_thread(void *arg)
{
	race_vm(arg, &cfg);
	return NULL;
}

/* ---- report ------------------------------------------------------------- */

static const char *flag_string(unsigned flags)
{
	static const char *names[] = { "", "ro", "log", "ro+log", "huge", "ro+huge",
				       "log+huge", "ro+log+huge" };
	return names[flags & 7];
}

static void report_vm(const struct vm *vm)
{
	const char *name = hv_vm_name(vm);

	if (name)
		emit("{\"event\":\"vm\",\"vm\":%d,\"pid\":%d,\"cycle\":%d,\"name\":\"%s\"}",
		     vm->index, getpid(), vm->cycle, name);
	else
		emit("{\"event\":\"vm\",\"vm\":%d,\"pid\":%d,\"cycle\":%d}", vm->index,
		     getpid(), vm->cycle);
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
	hv_report_memory(vm, &cfg);
}

/* ---- cycles ------------------------------------------------------------- */

/* fn on every VM: one after the other, or each in its own thread (--threads). */
static void each_vm(void *(*fn)(void *))
{
	pthread_t tids[MAX_VMS];

	for (int v = 0; v < cfg.vms; v++) {
		if (!cfg.threads) {
			fn(&vms[v]);
			continue;
		}
		if (pthread_create(&tids[v], NULL, fn, &vms[v]))
			die("pthread_create failed");
	}
	for (int v = 0; cfg.threads && v < cfg.vms; v++)
		pthread_join(tids[v], NULL);
}

static void run_all(int cycle)
{
	for (int v = 0; v < cfg.vms; v++) {
		memset(&vms[v], 0, sizeof(vms[v]));
		vms[v].index = v;
		vms[v].cycle = cycle;
	}
	each_vm(vm_thread);
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
	parse_args(argc, argv);
	check_config();         /* before the hypervisor is open: the architectural reach */
	hv_check_config(&cfg);
	place_code();
	check_race();
	hv_open();
	check_reach();          /* the reach the hypervisor gives the guest */
	for (int c = 0; c < cfg.cycles; c++) {
		int held = cfg.hold == 1 || (cfg.hold == 2 && c == cfg.cycles - 1);

		run_all(c);
		for (int v = 0; v < cfg.vms; v++)
			report_vm(&vms[v]);
		if (held)
			hold();
		if (cfg.race.mode) {            /* the race, then (held) the VMs it left */
			each_vm(race_thread);
			if (held)
				hold();
		}
		for (int v = 0; v < cfg.vms; v++) {
			if (race_gone && race_gone(&vms[v]))
				continue;       /* its race closed it and said so */
			if (cfg.vcpus > 1)
				vcpus_drop(&vms[v], &cfg);
			hv_destroy_vm(&vms[v], &cfg);
			emit("{\"event\":\"destroyed\",\"vm\":%d}", vms[v].index);
		}
	}
	emit("{\"event\":\"done\",\"status\":0}");
	return 0;
}
