/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _VFIOKIT_PCI_H
#define _VFIOKIT_PCI_H

#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/vfio_pci_core.h>

#include "vfiokit_pci_uapi.h"

/*
 * Locking:
 *   intx_lock (mutex)   serializes INTx set-up and tear-down and every
 *                       VFIO_DEVICE_SET_IRQS against each other; taken
 *                       outside the core's igate.
 *   lock (spinlock)     the INTx state below; taken in the hard interrupt
 *                       handler, the unmask paths (ioctl, config write,
 *                       virqfd) and the mask path. Nests outside desc->lock
 *                       (irq_try_hold_exclusive()/irq_release_exclusive())
 *                       and pci_lock (pci_check_and_*_intx()); genirq never
 *                       takes it.
 */
struct vfiokit_pci_device {
	struct vfio_pci_core_device core;

	struct mutex intx_lock;	/* see "Locking" above */
	spinlock_t lock;		/* see "Locking" above */

	/* Set once per open, under intx_lock. */
	bool pci_2_3;		/* the device can mask INTx (saved core flag) */
	bool enabled;		/* our INTx handler is requested */
	bool exclusive;		/* no INTx masking: exclusive line */
	unsigned int irq;
	char *name;
	struct virqfd *unmask_virqfd;

	/* Under lock. */
	struct eventfd_ctx *trigger;
	bool masked;		/* user view: delivered, not yet unmasked */
	bool dev_masked;	/* we set INTx Disable */
	bool line_held;		/* exclusive mode: we disabled the line */
	u64 line_count;
	u64 device_count;
};

static inline struct vfiokit_pci_device *
to_kdev(struct vfio_device *core_vdev)
{
	return container_of(core_vdev, struct vfiokit_pci_device, core.vdev);
}

int vfiokit_intx_set_irqs(struct vfiokit_pci_device *kdev, u32 flags,
			  unsigned int start, unsigned int count, void *data);
void vfiokit_intx_disable(struct vfiokit_pci_device *kdev);
void vfiokit_intx_mask(struct vfiokit_pci_device *kdev);
void vfiokit_intx_unmask(struct vfiokit_pci_device *kdev);
void vfiokit_intx_state(struct vfiokit_pci_device *kdev,
			struct vfiokit_intx_state *st);

#endif /* _VFIOKIT_PCI_H */
