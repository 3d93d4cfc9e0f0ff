/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _VFIOKIT_PCI_H
#define _VFIOKIT_PCI_H

#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/vfio_pci_core.h>

#include "vfiokit_pci_uapi.h"

/*
 * Locking, outermost first:
 *   intx_lock (mutex)   serializes INTx set-up and tear-down, every
 *                       VFIO_DEVICE_SET_IRQS, every config write that reaches
 *                       the command register or PM_CTRL and low-power entry
 *                       against each other; taken outside the core's igate and
 *                       memory_lock. Writers of @trigger hold it.
 *   core.memory_lock    (the core's rwsem) held for read around the mask,
 *                       unmask and INTx Disable repair after a command
 *                       register write, and around the repair after a
 *                       PM_CTRL write, so a reset cannot run in between.
 *   device lock         held by the PCI core around a reset and its
 *                       reset_done, where vfiokit_intx_restored() takes
 *                       @lock to put INTx Disable back after the restore;
 *                       the atomic writers cannot wait for a reset.
 *   eventfd wait queue  an unmask eventfd runs vfiokit_intx_unmask_virqfd()
 *                       under its wait-queue lock, so that lock nests
 *                       outside @lock: nothing signals an eventfd while
 *                       holding @lock.
 *   lock (spinlock)     the INTx state below; taken in the hard interrupt
 *                       handler, the unmask paths (ioctl, config write,
 *                       virqfd) and the mask path. Nests outside desc->lock
 *                       (irq_release_held_line(), enable_irq()) and
 *                       pci_lock (pci_check_and_*_intx(), pci_intx()).
 *                       genirq never takes it.
 *   @trigger            written with WRITE_ONCE() under intx_lock, read with
 *                       READ_ONCE() by the signallers; an old trigger is put
 *                       only after synchronize_irq() and
 *                       vfio_virqfd_flush_thread(), as in vfio-pci.
 */
struct vfiokit_pci_device {
	struct vfio_pci_core_device core;

	struct mutex intx_lock;	/* see "Locking" above */
	spinlock_t lock;		/* see "Locking" above */

	/* Set once per open, or under intx_lock (and lock where read by it). */
	bool pci_2_3;		/* the device can mask INTx (saved core flag) */
	bool opened;		/* between open and close; also under lock */
	u8 pin;			/* INTx pin as user space sees it (core: 0) */
	bool enabled;		/* our INTx handler is requested */
	bool exclusive;		/* no INTx masking: exclusive line */
	unsigned int irq;
	struct irq_data *irqd;	/* read locklessly: IRQD_MASK_DEVICE */
	char *name;
	struct virqfd *unmask_virqfd;
	struct eventfd_ctx *trigger;

	/*
	 * User space's read-only copy of the INTx mode and mask (intx_page.c):
	 * allocated with the device; its fields written with WRITE_ONCE()
	 * under lock (and intx_lock for the mode), or at open before any
	 * handler exists.
	 */
	struct vfiokit_intx_page *intx_page;

	/* Under lock. */
	bool masked;		/* user view: delivered, not yet unmasked */
	bool dev_masked;	/* we set INTx Disable */
	bool line_held;		/* the line may be held for this interrupt */
	bool unmask_deferred;	/* line release left to the virqfd thread */
	bool resignal;		/* virqfd found the device still asserting */
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
void vfiokit_intx_command_written(struct vfiokit_pci_device *kdev,
				  bool was_disabled);
void vfiokit_intx_restored(struct vfiokit_pci_device *kdev);
void vfiokit_intx_state(struct vfiokit_pci_device *kdev,
			struct vfiokit_intx_state *st);
int vfiokit_intx_page_alloc(struct vfiokit_pci_device *kdev);
void vfiokit_intx_page_free(struct vfiokit_pci_device *kdev);
int vfiokit_intx_page_register(struct vfiokit_pci_device *kdev);

#endif /* _VFIOKIT_PCI_H */
