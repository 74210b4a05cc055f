#!/bin/sh
# Build a small x86-64 kernel from Debian's linux-source-6.1 that slatcheck can run as the
# L1 guest kernel:
#
#   sh images/kernel-build/build.sh OUT
#   slatcheck run --kernel OUT/build scenarios/linux/kvm-npt-smoke.yaml
#
# OUT/src     the unpacked source (reused when present)
# OUT/build   the O= directory: arch/x86/boot/bzImage, vmlinux, System.map, .config
# OUT/modules what `make modules_install INSTALL_MOD_PATH=OUT/modules` wrote
#             (lib/modules/<release>/...), found by --kernel as the tree's sibling
#
# The configuration starts from `make tinyconfig` and switches on, with scripts/config, what
# the L1 guest needs: a 64-bit SMP kernel with PCI and ACPI, the 8250 serial console, an
# initramfs (gzip), ELF and script binaries, devtmpfs/proc/sysfs, /proc/<pid>/pagemap,
# the struct page array at a fixed address (SPARSEMEM_VMEMMAP: the frame-reference check),
# futexes, epoll and eventfd (busybox and the workload's threads), modules, KVM with
# kvm_amd as a module, kallsyms with data symbols, and BTF for vmlinux and the modules
# (DWARF 5 and pahole from dwarves).  No KASLR (RANDOMIZE_BASE/MEMORY stay off: the fixed
# x86-64 layout).  On 2 shared cores the build takes 20 to 30 minutes.  Modules are installed stripped of DWARF
# (INSTALL_MOD_STRIP=1), which keeps their .BTF sections.  Runs as root (apt-get).
# JOBS (default 2) and NICE (default 10) set `nice -n NICE make -jJOBS`.
set -eu

OUT=${1:?usage: build.sh OUT_DIR}
JOBS=${JOBS:-2}
NICE=${NICE:-10}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SRC=$OUT/src
O=$OUT/build
MODS=$OUT/modules

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends linux-source-6.1 build-essential bc bison \
    flex libelf-dev libssl-dev dwarves cpio kmod xz-utils python3 rsync >/dev/null

if [ ! -f "$SRC/Makefile" ]; then
    tarball=$(ls /usr/src/linux-source-6.1.tar.xz)
    mkdir -p "$SRC"
    tar -xf "$tarball" -C "$SRC" --strip-components=1
fi

mkdir -p "$O"
make -s -C "$SRC" O="$O" ARCH=x86_64 tinyconfig

ENABLE="64BIT SMP PCI ACPI TTY SERIAL_8250 SERIAL_8250_CONSOLE PRINTK EARLY_PRINTK
  BLK_DEV_INITRD RD_GZIP KERNEL_GZIP BINFMT_ELF BINFMT_SCRIPT DEVTMPFS PROC_FS SYSFS
  PROC_PAGE_MONITOR SPARSEMEM_VMEMMAP TMPFS SHMEM FUTEX EPOLL EVENTFD SIGNALFD TIMERFD
  POSIX_TIMERS MULTIUSER FILE_LOCKING ADVISE_SYSCALLS UNIX98_PTYS HIGH_RES_TIMERS CPU_SUP_AMD
  CPU_SUP_INTEL TRANSPARENT_HUGEPAGE MODULES MODULE_UNLOAD VIRTUALIZATION KVM
  DEBUG_KERNEL DEBUG_INFO DEBUG_INFO_DWARF5 DEBUG_INFO_BTF DEBUG_INFO_BTF_MODULES
  KALLSYMS KALLSYMS_ALL BPF_SYSCALL"
MODULE="KVM_AMD"
DISABLE="KVM_AMD_SEV DEBUG_INFO_REDUCED DEBUG_INFO_SPLIT MODULE_SIG MODULE_COMPRESS_XZ
  KERNEL_XZ KERNEL_LZMA KERNEL_BZIP2 KERNEL_LZO KERNEL_LZ4 KERNEL_ZSTD"

args=""
for opt in $ENABLE; do args="$args -e $opt"; done
for opt in $MODULE; do args="$args -m $opt"; done
for opt in $DISABLE; do args="$args -d $opt"; done
# shellcheck disable=SC2086
"$SRC/scripts/config" --file "$O/.config" $args
make -s -C "$SRC" O="$O" ARCH=x86_64 olddefconfig

missing=""
for opt in $ENABLE; do
    grep -q "^CONFIG_$opt=y" "$O/.config" || missing="$missing $opt"
done
grep -q "^CONFIG_KVM_AMD=m" "$O/.config" || missing="$missing KVM_AMD(=m)"
if [ -n "$missing" ]; then
    echo "build.sh: the configuration lacks:$missing (a dependency is off)" >&2
    exit 1
fi

start=$(date +%s)
nice -n "$NICE" make -s -C "$SRC" O="$O" ARCH=x86_64 -j"$JOBS" bzImage modules
rm -rf "$MODS"
make -s -C "$SRC" O="$O" ARCH=x86_64 INSTALL_MOD_PATH="$MODS" INSTALL_MOD_STRIP=1 \
    modules_install
end=$(date +%s)
echo "build.sh: built $(cat "$O/include/config/kernel.release") in $((end - start)) s"
echo "build.sh: slatcheck run --kernel $O scenarios/linux/kvm-npt-smoke.yaml"
