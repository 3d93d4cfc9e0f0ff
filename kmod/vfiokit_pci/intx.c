// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfiokit-pci: adaptive INTx.
 *
 * While the device is the only action on its line (IRQD_MASK_DEVICE clear),
 * an interrupt is masked by holding the line disabled (irq_try_hold_exclusive,
 * no config space access); while the line is shared it is masked at the
 * device (PCI 2.3 INTx Disable). Every unmask undoes whichever of the two is
 * in effect, decided under the locks, so a stale view in user space costs at
 * most a redundant check, never a lost interrupt or a line left disabled.
 *
 * Devices that cannot mask INTx fall back to vfio-pci's scheme: an exclusive,
 * unlazily disabled line.
 */

#include <linux/eventfd.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/vfio.h>

#include "vfiokit_pci.h"

static void vfiokit_intx_signal_locked(struct vfiokit_pci_device *kdev)
{
	lockdep_assert_held(&kdev->lock);
	if (kdev->trigger)
		eventfd_signal(kdev->trigger);
}

static irqreturn_t vfiokit_intx_handler(int irq, void *dev_id)
{
	struct vfiokit_pci_device *kdev = dev_id;
	struct pci_dev *pdev = kdev->core.pdev;
	irqreturn_t ret = IRQ_NONE;
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	if (kdev->exclusive) {
		/* The line is ours alone (vfio-pci's scheme). */
		disable_irq_nosync(irq);
		kdev->line_held = true;
		kdev->line_count++;
		ret = IRQ_HANDLED;
	} else if (irq_try_hold_exclusive(irq, kdev)) {
		kdev->line_held = true;
		kdev->line_count++;
		ret = IRQ_HANDLED;
	} else if (pci_check_and_mask_intx(pdev)) {
		/*
		 * Shared: mask whenever the device asserts, even if it is
		 * masked in our view already. After a hand-over that is what
		 * silences a still asserted device on the shared line.
		 */
		if (!kdev->dev_masked)
			kdev->device_count++;
		kdev->dev_masked = true;
		ret = IRQ_HANDLED;
	}
	if (ret == IRQ_HANDLED && !kdev->masked) {
		kdev->masked = true;
		vfiokit_intx_signal_locked(kdev);
	}
	spin_unlock_irqrestore(&kdev->lock, flags);
	return ret;
}

/*
 * Undo the mask in effect. Returns true if the device still asserts: it then
 * stays masked at the device and the user must be told again.
 */
static bool vfiokit_intx_unmask_locked(struct vfiokit_pci_device *kdev)
{
	struct pci_dev *pdev = kdev->core.pdev;

	lockdep_assert_held(&kdev->lock);
	if (!kdev->enabled || !kdev->masked || kdev->core.virq_disabled)
		return false;

	if (kdev->exclusive) {
		if (kdev->line_held)
			enable_irq(kdev->irq);
		kdev->line_held = false;
		kdev->masked = false;
		return false;
	}

	/*
	 * Only a line our handler held can need releasing; the release fails
	 * when the core handed the line over meanwhile, and then only the
	 * device can be masked. Skipping it otherwise saves a desc->lock round
	 * trip on every device-level unmask.
	 */
	if (kdev->line_held)
		irq_release_exclusive(kdev->irq, kdev);
	kdev->line_held = false;
	if (kdev->dev_masked) {
		if (!pci_check_and_unmask_intx(pdev))
			return true;
		kdev->dev_masked = false;
	}
	kdev->masked = false;
	return false;
}

void vfiokit_intx_unmask(struct vfiokit_pci_device *kdev)
{
	struct pci_dev *pdev = kdev->core.pdev;
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	if (!kdev->enabled) {
		/* Like vfio-pci: the device's bit follows the virtual one. */
		if (kdev->pci_2_3 && !kdev->core.virq_disabled)
			pci_intx(pdev, 1);
	} else if (vfiokit_intx_unmask_locked(kdev)) {
		vfiokit_intx_signal_locked(kdev);
	}
	spin_unlock_irqrestore(&kdev->lock, flags);
}

void vfiokit_intx_mask(struct vfiokit_pci_device *kdev)
{
	struct pci_dev *pdev = kdev->core.pdev;
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	if (!kdev->enabled) {
		if (kdev->pci_2_3)
			pci_intx(pdev, 0);
	} else if (!kdev->masked) {
		if (kdev->exclusive) {
			disable_irq_nosync(kdev->irq);
			kdev->line_held = true;
		} else {
			/* Always mask, not only when something is pending. */
			pci_intx(pdev, 0);
			kdev->dev_masked = true;
		}
		kdev->masked = true;
	}
	spin_unlock_irqrestore(&kdev->lock, flags);
}

/* virqfd (KVM resamplefd): runs in the eventfd's wait queue, atomic. */
static int vfiokit_intx_unmask_virqfd(void *opaque, void *data)
{
	struct vfiokit_pci_device *kdev = opaque;
	unsigned long flags;
	bool again;

	spin_lock_irqsave(&kdev->lock, flags);
	again = vfiokit_intx_unmask_locked(kdev);
	spin_unlock_irqrestore(&kdev->lock, flags);
	return again;
}

static void vfiokit_intx_resignal_virqfd(void *opaque, void *data)
{
	struct vfiokit_pci_device *kdev = opaque;
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	vfiokit_intx_signal_locked(kdev);
	spin_unlock_irqrestore(&kdev->lock, flags);
}

static int vfiokit_intx_enable(struct vfiokit_pci_device *kdev,
			       struct eventfd_ctx *trigger)
{
	struct pci_dev *pdev = kdev->core.pdev;
	unsigned long irqflags, flags;
	char *name;
	int ret;

	if (!pdev->irq || pdev->irq == IRQ_NOTCONNECTED)
		return -ENODEV;
	/* MSI or MSI-X is on through the core. */
	if (kdev->core.irq_type != VFIO_PCI_NUM_IRQS)
		return -EINVAL;

	name = kasprintf(GFP_KERNEL_ACCOUNT, "vfiokit-intx(%s)", pci_name(pdev));
	if (!name)
		return -ENOMEM;

	spin_lock_irqsave(&kdev->lock, flags);
	kdev->irq = pdev->irq;
	kdev->exclusive = !kdev->pci_2_3;
	kdev->masked = kdev->core.virq_disabled;
	kdev->line_held = kdev->exclusive && kdev->masked;
	kdev->dev_masked = !kdev->exclusive && kdev->masked;
	kdev->trigger = trigger;
	kdev->enabled = true;
	if (!kdev->exclusive)
		pci_intx(pdev, !kdev->masked);
	spin_unlock_irqrestore(&kdev->lock, flags);

	if (kdev->exclusive) {
		irqflags = kdev->masked ? IRQF_NO_AUTOEN : 0;
		irq_set_status_flags(kdev->irq, IRQ_DISABLE_UNLAZY);
	} else {
		irqflags = IRQF_SHARED | IRQF_ONESHOT_UNMASK_SHARED;
	}
	ret = request_irq(kdev->irq, vfiokit_intx_handler, irqflags, name, kdev);
	if (ret) {
		if (kdev->exclusive)
			irq_clear_status_flags(kdev->irq, IRQ_DISABLE_UNLAZY);
		spin_lock_irqsave(&kdev->lock, flags);
		kdev->enabled = false;
		kdev->trigger = NULL;
		kdev->masked = false;
		kdev->line_held = false;
		spin_unlock_irqrestore(&kdev->lock, flags);
		kfree(name);
		return ret;
	}
	kdev->name = name;
	return 0;
}

void vfiokit_intx_disable(struct vfiokit_pci_device *kdev)
{
	struct eventfd_ctx *trigger;
	unsigned long flags;

	lockdep_assert_held(&kdev->intx_lock);
	if (!kdev->enabled)
		return;

	vfio_virqfd_disable(&kdev->unmask_virqfd);
	/* Waits for a running handler; a held line is shut down with it. */
	free_irq(kdev->irq, kdev);
	if (kdev->exclusive)
		irq_clear_status_flags(kdev->irq, IRQ_DISABLE_UNLAZY);

	spin_lock_irqsave(&kdev->lock, flags);
	trigger = kdev->trigger;
	kdev->trigger = NULL;
	kdev->enabled = false;
	kdev->masked = false;
	kdev->line_held = false;
	spin_unlock_irqrestore(&kdev->lock, flags);

	if (trigger)
		eventfd_ctx_put(trigger);
	kfree(kdev->name);
	kdev->name = NULL;
}

static int vfiokit_intx_set_trigger(struct vfiokit_pci_device *kdev, int fd)
{
	struct eventfd_ctx *trigger = NULL, *old;
	unsigned long flags;
	int ret;

	if (fd >= 0) {
		trigger = eventfd_ctx_fdget(fd);
		if (IS_ERR(trigger))
			return PTR_ERR(trigger);
	}

	if (!kdev->enabled) {
		if (!trigger)
			return -EINVAL;
		ret = vfiokit_intx_enable(kdev, trigger);
		if (ret)
			eventfd_ctx_put(trigger);
		return ret;
	}

	/* Swap; the handler only signals under the lock. */
	spin_lock_irqsave(&kdev->lock, flags);
	old = kdev->trigger;
	kdev->trigger = trigger;
	spin_unlock_irqrestore(&kdev->lock, flags);
	if (old)
		eventfd_ctx_put(old);
	return 0;
}

/* VFIO_DEVICE_SET_IRQS for the INTx index; validated, under intx_lock. */
int vfiokit_intx_set_irqs(struct vfiokit_pci_device *kdev, u32 flags,
			  unsigned int start, unsigned int count, void *data)
{
	u32 dtype = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
	unsigned long irqflags;
	int fd;

	lockdep_assert_held(&kdev->intx_lock);

	switch (flags & VFIO_IRQ_SET_ACTION_TYPE_MASK) {
	case VFIO_IRQ_SET_ACTION_MASK:
	case VFIO_IRQ_SET_ACTION_UNMASK:
		if (!kdev->enabled || start != 0 || count != 1)
			return -EINVAL;
		if (dtype == VFIO_IRQ_SET_DATA_EVENTFD) {
			if (flags & VFIO_IRQ_SET_ACTION_MASK)
				return -ENOTTY;
			fd = *(s32 *)data;
			if (fd < 0) {
				vfio_virqfd_disable(&kdev->unmask_virqfd);
				return 0;
			}
			return vfio_virqfd_enable(kdev, vfiokit_intx_unmask_virqfd,
						  vfiokit_intx_resignal_virqfd,
						  NULL, &kdev->unmask_virqfd, fd);
		}
		if (dtype == VFIO_IRQ_SET_DATA_BOOL && !*(u8 *)data)
			return 0;
		if (flags & VFIO_IRQ_SET_ACTION_MASK)
			vfiokit_intx_mask(kdev);
		else
			vfiokit_intx_unmask(kdev);
		return 0;

	case VFIO_IRQ_SET_ACTION_TRIGGER:
		if (kdev->enabled && !count && dtype == VFIO_IRQ_SET_DATA_NONE) {
			vfiokit_intx_disable(kdev);
			return 0;
		}
		if (start != 0 || count != 1)
			return -EINVAL;
		if (dtype == VFIO_IRQ_SET_DATA_EVENTFD)
			return vfiokit_intx_set_trigger(kdev, *(s32 *)data);
		if (!kdev->enabled)
			return -EINVAL;
		/* Loopback, for testing. */
		if (dtype == VFIO_IRQ_SET_DATA_NONE || *(u8 *)data) {
			spin_lock_irqsave(&kdev->lock, irqflags);
			vfiokit_intx_signal_locked(kdev);
			spin_unlock_irqrestore(&kdev->lock, irqflags);
		}
		return 0;
	}
	return -ENOTTY;
}

void vfiokit_intx_state(struct vfiokit_pci_device *kdev,
			struct vfiokit_intx_state *st)
{
	struct pci_dev *pdev = kdev->core.pdev;
	struct irq_data *d;
	unsigned long flags;
	unsigned int irq;

	memset(st, 0, sizeof(*st));
	st->version = 1;

	spin_lock_irqsave(&kdev->lock, flags);
	irq = kdev->enabled ? kdev->irq : pdev->irq;
	if (irq == IRQ_NOTCONNECTED)
		irq = 0;
	d = irq ? irq_get_irq_data(irq) : NULL;
	st->irq = irq;
	st->mask_device = d ? irqd_mask_device(d) : 1;
	if (kdev->enabled) {
		st->mode = kdev->exclusive ? VFIOKIT_INTX_EXCLUSIVE :
					     VFIOKIT_INTX_ADAPTIVE;
		st->line_held = kdev->line_held && d && irqd_irq_disabled(d);
		st->dev_masked = kdev->dev_masked;
		st->masked = kdev->masked;
	}
	st->line_count = kdev->line_count;
	st->device_count = kdev->device_count;
	spin_unlock_irqrestore(&kdev->lock, flags);
}
