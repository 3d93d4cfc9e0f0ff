// SPDX-License-Identifier: GPL-2.0-only
/*
 * The C reference for the INTx round-trip benchmark: exactly the syscalls the Python driver
 * makes, nothing else. Legacy VFIO uAPI, edu device.
 *
 *   intx_loop BDF GROUP SECONDS MODE
 *     MODE ioctl: raise, read eventfd, ack, SET_IRQS UNMASK
 *     MODE state: raise, read eventfd, ack, vfiokit-pci's state (its state page, mapped
 *                 once: no syscall; the state feature ioctl where the module has no page),
 *                 then unmask at the device (command register high byte) or at the line
 *                 (SET_IRQS UNMASK)
 *
 *   intx_loop BDF - SECONDS uio
 *     a device bound to uio_pci_generic (series patch 0005): raise, read /dev/uioN, ack,
 *     write 1 to /dev/uioN (irqcontrol: the kernel unmasks the line or the device)
 *   intx_loop BDF - SECONDS uio-config
 *     the stock uio_pci_generic protocol: raise, read /dev/uioN, ack, clear INTx Disable
 *     through sysfs config (read COMMAND's high byte, write it back without the bit)
 *
 * Prints one line: rounds seconds line_unmasks device_unmasks p50_us p99_us
 * (latency of one whole round trip, raise to unmask).
 */
#include <dirent.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define FEATURE_INTX_STATE 0xfa00
#define PAGE_TYPE (0x80000000u | 0xffff)	/* vfiokit_pci_uapi.h: VFIOKIT_REGION_TYPE */
#define PAGE_SUBTYPE 1

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* vfiokit-pci's state page, mapped read-only; NULL if the device has none. */
static volatile uint32_t *map_state_page(int dev)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };
	unsigned int i;

	if (ioctl(dev, VFIO_DEVICE_GET_INFO, &info))
		die("device info");
	for (i = VFIO_PCI_NUM_REGIONS; i < info.num_regions; i++) {
		union { struct vfio_region_info r; char buf[256]; } u = { 0 };
		struct vfio_info_cap_header *cap;
		uint32_t off;
		void *page;

		u.r.argsz = sizeof(u);
		u.r.index = i;
		if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &u) || !(u.r.flags & VFIO_REGION_INFO_FLAG_CAPS))
			continue;
		for (off = u.r.cap_offset; off && off + sizeof(*cap) <= sizeof(u); off = cap->next) {
			struct vfio_region_info_cap_type *t = (void *)(u.buf + off);

			cap = &t->header;
			if (cap->id != VFIO_REGION_INFO_CAP_TYPE || t->type != PAGE_TYPE ||
			    t->subtype != PAGE_SUBTYPE)
				continue;
			page = mmap(NULL, u.r.size, PROT_READ, MAP_SHARED, dev, u.r.offset);
			if (page == MAP_FAILED)
				die("mmap state page");
			return page;
		}
	}
	return NULL;
}

static void report(uint64_t rounds, double took, uint64_t line, uint64_t device,
		   double *lat, size_t cap)
{
	size_t n = rounds < cap ? rounds : cap;

	qsort(lat, n, sizeof(*lat), cmp);
	printf("%llu %.6f %llu %llu %.2f %.2f\n", (unsigned long long)rounds, took,
	       (unsigned long long)line, (unsigned long long)device, lat[n / 2], lat[n * 99 / 100]);
}

/*
 * The uio_pci_generic loop: the syscalls vfiokit.uio's "kernel" policy makes, or (config)
 * those of its "state" policy on a shared line, the stock protocol.
 */
static int uio_loop(const char *bdf, double seconds, int config, double *lat, size_t cap)
{
	char path[300];
	struct dirent *d;
	DIR *dir;
	int fd = -1, cfg = -1;
	unsigned char hi;
	int32_t on = 1;
	uint32_t count;
	uint64_t rounds = 0;
	volatile uint32_t *regs;
	double start, end, t0;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/uio", bdf);
	dir = opendir(path);
	if (!dir)
		die("no uio device (bound to uio_pci_generic?)");
	while ((d = readdir(dir)))
		if (!strncmp(d->d_name, "uio", 3)) {
			snprintf(path, sizeof(path), "/dev/%s", d->d_name);
			fd = open(path, O_RDWR);
			break;
		}
	closedir(dir);
	if (fd < 0)
		die("open /dev/uioN");
	regs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);	/* map0 */
	if (regs == MAP_FAILED)
		die("mmap map0");
	if (write(fd, &on, sizeof(on)) != sizeof(on))
		die("irqcontrol");
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/config", bdf);
	if (config && (cfg = open(path, O_RDWR)) < 0)
		die("open config");
	start = now();
	end = start + seconds;
	while (now() < end) {
		t0 = now();
		regs[0x60 / 4] = 1;
		if (read(fd, &count, sizeof(count)) != sizeof(count))
			die("read /dev/uioN");
		regs[0x64 / 4] = 1;
		if (config) {
			if (pread(cfg, &hi, 1, 5) != 1)
				die("pread config");
			hi &= ~0x04;
			if (pwrite(cfg, &hi, 1, 5) != 1)
				die("pwrite config");
		} else if (write(fd, &on, sizeof(on)) != sizeof(on)) {
			die("irqcontrol");
		}
		if (rounds < cap)
			lat[rounds] = (now() - t0) * 1e6;
		rounds++;
	}
	report(rounds, now() - start, 0, 0, lat, cap);
	return 0;
}

int main(int argc, char **argv)
{
	char path[64];
	int container, group, dev, efd, state_mode;
	struct vfio_group_status status = { .argsz = sizeof(status) };
	struct vfio_region_info bar = { .argsz = sizeof(bar), .index = 0 };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct { struct vfio_irq_set h; int32_t fd; } trig;
	struct vfio_irq_set unmask = { .argsz = sizeof(unmask), .index = 0, .start = 0, .count = 1,
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK };
	struct { struct vfio_device_feature h; uint32_t s[8]; uint64_t c[2]; } feat;
	volatile uint32_t *regs, *page = NULL;
	unsigned char cmd_hi, cmd_hi_set;
	uint64_t val, rounds = 0, line = 0, device = 0;
	double start, end, t0, *lat;
	size_t cap = 4 << 20;

	if (argc != 5)
		return fprintf(stderr, "usage: %s BDF GROUP|- SECONDS ioctl|state|uio|uio-config\n",
			       argv[0]), 2;
	state_mode = !strcmp(argv[4], "state");
	lat = malloc(cap * sizeof(*lat));
	if (!lat)
		die("malloc");
	if (!strncmp(argv[4], "uio", 3))
		return uio_loop(argv[1], atof(argv[3]), !strcmp(argv[4], "uio-config"), lat, cap);
	container = open("/dev/vfio/vfio", O_RDWR);
	snprintf(path, sizeof(path), "/dev/vfio/%s", argv[2]);
	group = open(path, O_RDWR);
	if (container < 0 || group < 0)
		die("open");
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("group status");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) ||
	    ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		die("container");
	dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[1]);
	if (dev < 0 || ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar) ||
	    ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg))
		die("device");
	regs = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar.offset);
	if (regs == MAP_FAILED)
		die("mmap");
	if (pread(dev, &cmd_hi, 1, cfg.offset + 5) != 1)
		die("config");
	cmd_hi &= ~0x04;
	cmd_hi_set = cmd_hi | 0x04;
	efd = eventfd(0, EFD_CLOEXEC);
	memset(&trig, 0, sizeof(trig));
	trig.h.argsz = sizeof(trig);
	trig.h.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	trig.h.count = 1;
	trig.fd = efd;
	if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &trig))
		die("SET_IRQS trigger");
	memset(&feat, 0, sizeof(feat));
	feat.h.argsz = sizeof(feat);
	feat.h.flags = VFIO_DEVICE_FEATURE_GET | FEATURE_INTX_STATE;
	if (state_mode)
		page = map_state_page(dev);

	start = now();
	end = start + atof(argv[3]);
	while (now() < end) {
		t0 = now();
		regs[0x60 / 4] = 1;
		if (read(efd, &val, sizeof(val)) != sizeof(val))
			die("read eventfd");
		regs[0x64 / 4] = 1;
		if (state_mode) {
			if (page)
				feat.s[3] = page[2];	/* struct vfiokit_intx_page.mask_device */
			else if (ioctl(dev, VFIO_DEVICE_FEATURE, &feat))
				die("feature");
			if (feat.s[3]) {	/* mask_device */
				/* toggle INTx Disable: set, then clear */
				if (pwrite(dev, &cmd_hi_set, 1, cfg.offset + 5) != 1 ||
				    pwrite(dev, &cmd_hi, 1, cfg.offset + 5) != 1)
					die("pwrite");
				device++;
			} else {
				if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &unmask))
					die("unmask");
				line++;
			}
		} else if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &unmask)) {
			die("unmask");
		}
		if (rounds < cap)
			lat[rounds] = (now() - t0) * 1e6;
		rounds++;
	}
	report(rounds, now() - start, line, device, lat, cap);
	return 0;
}
