/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * vfiokit-pci: the private VFIO device feature that reports the adaptive INTx
 * state of a device. Read with VFIO_DEVICE_FEATURE, flags
 * VFIO_DEVICE_FEATURE_GET | VFIOKIT_DEVICE_FEATURE_INTX_STATE.
 */
#ifndef _VFIOKIT_PCI_UAPI_H
#define _VFIOKIT_PCI_UAPI_H

#include <linux/types.h>

#define VFIOKIT_DEVICE_FEATURE_INTX_STATE	0xfa00

enum vfiokit_intx_mode {
	VFIOKIT_INTX_OFF	= 0,	/* no INTx handler requested */
	VFIOKIT_INTX_ADAPTIVE	= 1,	/* line level alone, device level shared */
	VFIOKIT_INTX_EXCLUSIVE	= 2,	/* no INTx masking: exclusive line */
};

struct vfiokit_intx_state {
	__u32 version;		/* 1 */
	__u32 mode;		/* enum vfiokit_intx_mode */
	__u32 irq;		/* the host IRQ of the INTx line, 0 if none */
	__u32 mask_device;	/* IRQD_MASK_DEVICE of the line now */
	__u32 line_held;	/* the line is disabled for this device */
	__u32 dev_masked;	/* INTx Disable is set by this driver */
	__u32 masked;		/* delivered and not yet unmasked by the user */
	__u32 reserved;
	__u64 line_count;	/* interrupts masked at the line */
	__u64 device_count;	/* interrupts masked at the device */
};

/*
 * The INTx state page: a device-specific VFIO region, found by its
 * VFIO_REGION_INFO_CAP_TYPE (VFIOKIT_REGION_TYPE,
 * VFIOKIT_REGION_SUBTYPE_INTX_PAGE), one page long, readable with pread()
 * and mmappable shared and read-only (PROT_WRITE, MAP_PRIVATE, an offset or
 * a length other than one page are refused). struct vfiokit_intx_page sits
 * at its start; the driver stores each field with a single 32-bit write, so
 * user space reads it with plain loads and no syscall.
 *
 * The type is VFIO_REGION_TYPE_PCI_VENDOR_TYPE with vendor ID 0xffff, which
 * no PCI vendor holds: a driver's type, not the device vendor's. An in-tree
 * driver would be given a type of its own.
 */
#define VFIOKIT_REGION_TYPE			(0x80000000u | 0xffff)
#define VFIOKIT_REGION_SUBTYPE_INTX_PAGE	1

struct vfiokit_intx_page {
	/*
	 * 1. Later versions only append fields: a reader accepts any version
	 * at least the one it knows.
	 */
	__u32 version;
	__u32 mode;		/* enum vfiokit_intx_mode, as the feature's */
	/*
	 * How the driver masked the last interrupt it handled (set when INTx
	 * is enabled from IRQD_MASK_DEVICE): 0 at the line, 1 at the device.
	 * A hint for choosing the unmask, which may be stale by the time it is
	 * read (a sharer came or went): every unmask path undoes whichever
	 * mask is in effect, so a stale hint costs a slower unmask, never a
	 * lost interrupt.
	 */
	__u32 mask_device;
	__u32 reserved;
};

#endif /* _VFIOKIT_PCI_UAPI_H */
