/*
 * slat-workload for DragonFly: what a vkernel does to its memory, without the vkernel.
 * Built in the DragonFly guest by its own cc with vkernel_tables.c; no system header
 * (the live image has no /usr/include): the few libc calls are declared below.
 *
 *   slat-workload [--vms 1|2] [--cycles 1] [--no-hold|--hold-last]
 *                 --slot VA:SIZE --touch VA:r|w ...
 *   slat-workload --probe
 *
 * VM 0: a memory image file (/tmp/slat-vkernel-<pid>.img) holds VPTE tables
 * (vkernel.h) for a region of SIZE bytes; the region is mapped MAP_SHARED |
 * MAP_VPAGETABLE at VA in this process (MAP_TRYFIXED, refused if it lands
 * elsewhere), its master PDE set with mcontrol(MADV_SETMAP) (as vkernel64's
 * init_kern_memory() does for its kernel map), and each touch reads or writes 4
 * bytes through it, so the host kernel faults the pages in through
 * vm_fault_vpagetable().  VM 1 (--vms 2): a vmspace made with vmspace_create(),
 * the same image mapped there at VA + 1 GiB with vmspace_mmap() and given the same
 * master PDE with vmspace_mcontrol() (as a vkernel does for its guests' vmspaces);
 * nothing runs in it.
 *
 * Report lines as slat-workload's ("@@SLAT {json}"): vm, slot (gpa = hva = the
 * region's address), "vpagetable" (image path and size, master PDE, the process's
 * struct proc address from sysctl kern.proc.pid: kp_paddr), exit (hlt), hold.
 * While held, each stdin line is a command: "go" (or EOF) releases; "stale VA"
 * clears the leaf VPTE mapping VA in the image *without* MADV_INVAL (the host's
 * PTE is then stale: what a vkernel must never leave behind); "inval VA" clears it
 * and calls mcontrol(MADV_INVAL).  Each prints a "vpte" event.  Release unmaps,
 * destroys the vmspace and removes the image, then "destroyed" and "done".
 *
 * --probe maps a 2 MiB region and reads page 0 back: {"event":"probe","ok":1} when
 * the kernel translates it through the VPTEs, else an "error" event naming the
 * failing step and its errno (a kernel without MAP_VPAGETABLE: EINVAL or the
 * translation missing; vm.vkernel_enable=0: EOPNOTSUPP).
 */
#include "vkernel.h"

/* errno when the guest has headers (DragonFly declares it thread-local), else 0 */
#if defined(__has_include)
#if __has_include(<errno.h>)
#include <errno.h>
#define VK_ERRNO errno
#endif
#endif
#ifndef VK_ERRNO
#define VK_ERRNO 0
#endif

typedef long ssize_t;
typedef long off_t;
typedef int pid_t;

#define O_RDWR		0x0002
#define O_CREAT		0x0200
#define O_TRUNC		0x0400
#define PROT_READ	0x01
#define PROT_WRITE	0x02
#define MAP_SHARED	0x0001
#define MAP_VPAGETABLE	0x2000
#define MAP_FIXED	0x0010
#define MAP_TRYFIXED	0x00010000
#define MAP_FAILED	((void *)-1)
#define MADV_INVAL	10
#define MADV_SETMAP	11
#define CTL_KERN	1
#define KERN_PROC	14
#define KERN_PROC_PID	1
#define VMSPACE_ID	((void *)0x5a17)
#define VM1_OFFSET	(1UL << 30)

int open(const char *, int, ...);
int close(int);
int ftruncate(int, off_t);
int unlink(const char *);
ssize_t read(int, void *, vk_size);
ssize_t write(int, const void *, vk_size);
void *mmap(void *, vk_size, int, int, int, off_t);
int munmap(void *, vk_size);
int mcontrol(void *, vk_size, int, off_t);
int vmspace_create(void *, int, void *);
int vmspace_destroy(void *);
void *vmspace_mmap(void *, void *, vk_size, int, int, int, off_t);
int vmspace_mcontrol(void *, void *, vk_size, int, off_t);
int sysctl(const int *, unsigned int, void *, vk_size *, const void *, vk_size);
pid_t getpid(void);
int snprintf(char *, vk_size, const char *, ...);
unsigned long long strtoull(const char *, char **, int);
int strcmp(const char *, const char *);
int strncmp(const char *, const char *, vk_size);
char *strerror(int);
void exit(int) __attribute__((noreturn));

#define MAX_TOUCHES 256

static struct {
	int vms, hold;
	vk_u64 va, size;
	int ntouches;
	vk_u64 touch[MAX_TOUCHES];
	char access[MAX_TOUCHES];
} cfg = { 1, 1, 0, 0, 0, { 0 }, { 0 } };

static struct vk_layout layout;
static unsigned char *image;            /* the image through a plain mapping */
static unsigned char *region;           /* the same object through its VPTEs */
static char image_path[64];
static int image_fd = -1, have_vmspace;

static void emit(const char *json)
{
	char line[512];
	int n = snprintf(line, sizeof(line), "@@SLAT %s\n", json);

	if (n > 0)
		(void)write(1, line, (vk_size)n);
}

static void die(const char *what)
{
	char msg[256];
	int err = VK_ERRNO;

	snprintf(msg, sizeof(msg), "{\"event\":\"error\",\"msg\":\"%s: %s (errno %d)\"}", what,
		 err ? strerror(err) : "refused", err);
	emit(msg);
	exit(1);
}

static vk_u64 number(const char *s, char **end)
{
	vk_u64 v = strtoull(s, end, 0);

	switch (**end) {
	case 'K': case 'k': v <<= 10; (*end)++; break;
	case 'M': case 'm': v <<= 20; (*end)++; break;
	case 'G': case 'g': v <<= 30; (*end)++; break;
	}
	return v;
}

static void parse(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
		char *end;

		if (!strcmp(a, "--vms") || !strcmp(a, "--cycles")) {
			vk_u64 n = number(v, &end);
			if (!strcmp(a, "--vms") && (n < 1 || n > 2))
				die("--vms must be 1 or 2 (the process's map, and a vmspace)");
			if (!strcmp(a, "--cycles") && n != 1)
				die("--cycles must be 1");
			if (!strcmp(a, "--vms"))
				cfg.vms = (int)n;
			i++;
		} else if (!strcmp(a, "--no-hold")) {
			cfg.hold = 0;
		} else if (!strcmp(a, "--hold-last")) {
			cfg.hold = 1;
		} else if (!strcmp(a, "--slot") && !cfg.size) {
			cfg.va = number(v, &end);
			if (*end != ':')
				die("--slot wants VA:SIZE");
			cfg.size = number(end + 1, &end);
			if (*end || cfg.va % (2UL << 20) || vk_layout(cfg.size, &layout))
				die("--slot VA:SIZE: VA 2 MiB aligned, SIZE a multiple of 2 MiB up to 1 GiB, no flags");
			i++;
		} else if (!strcmp(a, "--touch") && cfg.ntouches < MAX_TOUCHES) {
			cfg.touch[cfg.ntouches] = number(v, &end);
			if (*end != ':' || (end[1] != 'r' && end[1] != 'w') || end[2])
				die("--touch wants VA:r or VA:w (no x: the region is not executable)");
			cfg.access[cfg.ntouches++] = end[1];
			i++;
		} else {
			die("unknown or repeated argument (one --slot; --threads, --ipa-bits and --code "
			    "do not apply)");
		}
	}
	if (!cfg.size)
		die("no --slot given");
	for (int t = 0; t < cfg.ntouches; t++)
		if (cfg.touch[t] < cfg.va || cfg.touch[t] + 4 > cfg.va + cfg.size)
			die("a touch lies outside the slot");
}

static void make_image(vk_u64 va)
{
	snprintf(image_path, sizeof(image_path), "/tmp/slat-vkernel-%d.img", (int)getpid());
	image_fd = open(image_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (image_fd < 0)
		die("open of the memory image");
	if (ftruncate(image_fd, (off_t)layout.image_size))
		die("ftruncate of the memory image");
	image = mmap(0, layout.image_size, PROT_READ | PROT_WRITE, MAP_SHARED, image_fd, 0);
	if (image == MAP_FAILED)
		die("mmap of the memory image");
	vk_build(image, &layout, va);
}

static void map_region(vk_u64 va)
{
	region = mmap((void *)va, cfg.size, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_VPAGETABLE | MAP_TRYFIXED, image_fd, 0);
	if (region == MAP_FAILED)
		die("mmap MAP_VPAGETABLE");
	if ((vk_u64)region != va)
		die("the region did not land at the slot's address");
	if (mcontrol(region, cfg.size, MADV_SETMAP, (off_t)layout.master_pde))
		die("mcontrol MADV_SETMAP");
}

static void map_vmspace(void)
{
	void *at;

	if (vmspace_create(VMSPACE_ID, 0, 0))
		die("vmspace_create");
	have_vmspace = 1;
	at = vmspace_mmap(VMSPACE_ID, (void *)(cfg.va + VM1_OFFSET), cfg.size,
			  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_VPAGETABLE | MAP_FIXED,
			  image_fd, 0);
	if (at == MAP_FAILED)
		die("vmspace_mmap MAP_VPAGETABLE");
	if (vmspace_mcontrol(VMSPACE_ID, at, cfg.size, MADV_SETMAP, (off_t)layout.master_pde))
		die("vmspace_mcontrol MADV_SETMAP");
}

static void touch_all(void)
{
	for (int t = 0; t < cfg.ntouches; t++) {
		volatile unsigned int *p = (volatile unsigned int *)(region + (cfg.touch[t] - cfg.va));

		if (cfg.access[t] == 'w')
			*p = 0x54414c53u;      /* "SLAT" */
		else
			(void)*p;
	}
}

static vk_u64 proc_address(void)
{
	int mib[4] = { CTL_KERN, KERN_PROC, KERN_PROC_PID, (int)getpid() };
	vk_u64 kp[512];                 /* struct kinfo_proc; kp_paddr is its first member */
	vk_size len = sizeof(kp);

	if (sysctl(mib, 4, kp, &len, 0, 0) || len < 8)
		die("sysctl kern.proc.pid");
	return kp[0];
}

static void report(void)
{
	char line[512];
	int pid = (int)getpid();
	vk_u64 paddr = proc_address();

	for (int vm = 0; vm < cfg.vms; vm++) {
		vk_u64 va = cfg.va + (vm ? VM1_OFFSET : 0);

		snprintf(line, sizeof(line), "{\"event\":\"vm\",\"vm\":%d,\"pid\":%d,\"cycle\":0}",
			 vm, pid);
		emit(line);
		snprintf(line, sizeof(line), "{\"event\":\"slot\",\"vm\":%d,\"slot\":0,\"gpa\":%lu,"
			 "\"size\":%lu,\"hva\":%lu,\"flags\":\"\"}", vm, va, cfg.size, va);
		emit(line);
		snprintf(line, sizeof(line), "{\"event\":\"vpagetable\",\"vm\":%d,\"image\":\"%s\","
			 "\"image_size\":%lu,\"master_pde\":%lu,\"paddr\":%lu,\"vmspace\":%d}", vm,
			 image_path, layout.image_size, layout.master_pde, paddr, vm);
		emit(line);
		snprintf(line, sizeof(line), "{\"event\":\"exit\",\"vm\":%d,\"reason\":\"hlt\"}", vm);
		emit(line);
	}
}

static void clear_leaf(const char *op, vk_u64 va, int inval)
{
	char line[256];
	vk_u64 page;

	if (va < cfg.va || va >= cfg.va + cfg.size) {
		emit("{\"event\":\"error\",\"msg\":\"vpte command outside the slot\"}");
		return;
	}
	page = (va - cfg.va) / VK_PAGE;
	for (int i = 0; i < 8; i++)
		image[vk_leaf_offset(&layout, page) + (vk_u64)i] = 0;
	if (inval && mcontrol(region + page * VK_PAGE, VK_PAGE, MADV_INVAL, 0))
		die("mcontrol MADV_INVAL");
	snprintf(line, sizeof(line), "{\"event\":\"vpte\",\"op\":\"%s\",\"va\":%lu}", op,
		 va & ~(VK_PAGE - 1));
	emit(line);
}

/* Read commands until "go" or EOF. */
static void hold(void)
{
	char buf[128];
	vk_size n = 0;

	emit("{\"event\":\"hold\"}");
	for (;;) {
		char c;
		ssize_t got = read(0, &c, 1);

		if (got <= 0)
			return;
		if (c != '\n') {
			if (n < sizeof(buf) - 1)
				buf[n++] = c;
			continue;
		}
		buf[n] = 0;
		n = 0;
		if (!strcmp(buf, "go"))
			return;
		if (!strncmp(buf, "stale ", 6) || !strncmp(buf, "inval ", 6)) {
			char *end;
			vk_u64 va = strtoull(buf + 6, &end, 0);

			clear_leaf(buf[0] == 's' ? "stale" : "inval", va, buf[0] == 'i');
		}
	}
}

static void release(void)
{
	char line[64];

	munmap(region, cfg.size);
	if (have_vmspace && vmspace_destroy(VMSPACE_ID))
		die("vmspace_destroy");
	munmap(image, layout.image_size);
	close(image_fd);
	unlink(image_path);
	for (int vm = 0; vm < cfg.vms; vm++) {
		snprintf(line, sizeof(line), "{\"event\":\"destroyed\",\"vm\":%d}", vm);
		emit(line);
	}
	emit("{\"event\":\"done\",\"status\":0}");
}

static int probe(void)
{
	cfg.size = 2UL << 20;
	cfg.va = 0x7f0000000000UL;
	if (vk_layout(cfg.size, &layout))
		return 1;
	make_image(cfg.va);
	region = mmap(0, cfg.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_VPAGETABLE,
		      image_fd, 0);
	if (region == MAP_FAILED)
		die("probe: mmap MAP_VPAGETABLE");
	if (mcontrol(region, cfg.size, MADV_SETMAP, (off_t)layout.master_pde))
		die("probe: mcontrol MADV_SETMAP");
	/* through the VPTEs, region page 0 is data page 0, tagged with its address */
	if (*(volatile vk_u64 *)(region + 0xff8) != cfg.va) {
		emit("{\"event\":\"error\",\"msg\":\"probe: the region is not translated "
		     "through its VPTEs\"}");
		exit(1);
	}
	munmap(region, cfg.size);
	unlink(image_path);
	emit("{\"event\":\"probe\",\"ok\":1}");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--probe"))
		return probe();
	parse(argc, argv);
	make_image(cfg.va);
	map_region(cfg.va);
	if (cfg.vms == 2)
		map_vmspace();
	touch_all();
	report();
	if (cfg.hold)
		hold();
	release();
	return 0;
}
