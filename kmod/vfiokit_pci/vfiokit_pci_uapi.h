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

#endif /* _VFIOKIT_PCI_UAPI_H */
