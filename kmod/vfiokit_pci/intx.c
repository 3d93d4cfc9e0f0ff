// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfiokit-pci: adaptive INTx.
 *
 * The handler is requested with IRQF_ONESHOT_UNMASK_SHARED. While the device
 * is the only action on its line (IRQD_MASK_DEVICE clear), the handler only
 * returns IRQ_HANDLED and genirq keeps the line masked after it, until
 * irq_release_held_line() (no config space access); while the line is shared
 * the handler masks at the device (PCI 2.3 INTx Disable), and genirq unmasks
 * the line as usual. Every unmask undoes whichever of the two is
 * in effect, decided under the locks, so a stale view in user space costs at
 * most a redundant check, never a lost interrupt or a line left disabled.
 *
 * Devices that cannot mask INTx fall back to vfio-pci's scheme: an exclusive,
 * unlazily disabled line.
 *
 * The uAPI is vfio-pci's (drivers/vfio/pci/vfio_pci_intrs.c), and so are its
 * rules: the trigger eventfd is never signalled under a lock that an unmask
 * path takes (an unmask eventfd runs its handler inside the eventfd's wait
 * queue, and user space may pass the trigger itself as unmask eventfd), and
 * an old trigger is released only after synchronize_irq() and a flush of the
 * unmask eventfd's thread. See docs/vfiokit-pci.md for every behaviour next
 * to vfio-pci's.
 */

#include <linux/eventfd.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/pci.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/vfio.h>

#include "vfiokit_pci.h"

/* vfiokit_intx_unmask_locked() results */
enum {
	VFIOKIT_UNMASKED,	/* nothing is masked any more */
	VFIOKIT_STILL_PENDING,	/* the device still asserts: signal again */
	VFIOKIT_DEFERRED,	/* the line is released by the virqfd thread */
};

/*
 * Signal the trigger, as vfio_send_intx_eventfd() does: never with kdev->lock
 * held, and not while the user has INTx disabled in the command register.
 * Callers are the hard interrupt handler (covered by synchronize_irq() when
 * the trigger is swapped), the unmask eventfd's thread (covered by
 * vfio_virqfd_flush_thread()) and ioctl or config paths under intx_lock.
 */
static void vfiokit_intx_signal(struct vfiokit_pci_device *kdev)
{
	struct eventfd_ctx *trigger;

	lockdep_assert_not_held(&kdev->lock);
	if (unlikely(READ_ONCE(kdev->core.virq_disabled)))
		return;
	trigger = READ_ONCE(kdev->trigger);
	if (likely(trigger))
		eventfd_signal(trigger);
}

static irqreturn_t vfiokit_intx_handler(int irq, void *dev_id)
{
	struct vfiokit_pci_device *kdev = dev_id;
	struct pci_dev *pdev = kdev->core.pdev;
	irqreturn_t ret = IRQ_NONE;
	unsigned long flags;
	bool signal = false;

	spin_lock_irqsave(&kdev->lock, flags);
	if (kdev->exclusive) {
		/* The line is ours alone (vfio-pci's scheme). */
		disable_irq_nosync(irq);
		kdev->line_held = true;
		kdev->line_count++;
		ret = IRQ_HANDLED;
	} else if (!irqd_mask_device(kdev->irqd)) {
		/*
		 * Alone on the line: every interrupt on it is taken to be
		 * ours, without reading the device's status (the config
		 * access line mode exists to avoid). docs/vfiokit-pci.md
		 * says what that costs. genirq keeps the line masked when we
		 * return, unless the line became shared meanwhile: it then
		 * fires again while the device asserts, and the branch below
		 * masks the device. The unmask releases whatever is held.
		 */
		kdev->line_held = true;
		kdev->line_count++;
		WRITE_ONCE(kdev->intx_page->mask_device, 0);
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
		WRITE_ONCE(kdev->intx_page->mask_device, 1);
		ret = IRQ_HANDLED;
	}
	if (ret == IRQ_HANDLED && !kdev->masked) {
		kdev->masked = true;
		kdev->unmask_deferred = false;
		signal = true;
	}
	spin_unlock_irqrestore(&kdev->lock, flags);

	if (signal)
		vfiokit_intx_signal(kdev);
	return ret;
}

/*
 * Undo the mask in effect. @may_release_line is false when the unmask
 * eventfd fires from an interrupt handler or a kernel thread (see
 * vfiokit_intx_from_user()): the release is then left to the virqfd thread.
 */
static int vfiokit_intx_unmask_locked(struct vfiokit_pci_device *kdev,
				      bool may_release_line)
{
	struct pci_dev *pdev = kdev->core.pdev;

	lockdep_assert_held(&kdev->lock);
	if (!kdev->enabled || !kdev->masked || kdev->core.virq_disabled)
		return VFIOKIT_UNMASKED;

	if (kdev->line_held && !may_release_line) {
		kdev->unmask_deferred = true;
		return VFIOKIT_DEFERRED;
	}
	kdev->unmask_deferred = false;

	if (kdev->exclusive) {
		if (kdev->line_held)
			enable_irq(kdev->irq);
		kdev->line_held = false;
		kdev->masked = false;
		return VFIOKIT_UNMASKED;
	}

	/*
	 * The release finds nothing to release when genirq handed the line
	 * over meanwhile (or did not hold it, see the handler); only the
	 * device can be masked then. Both can be masked when the line became
	 * unshared while the handler ran: undo both.
	 */
	/*
	 * Released whenever we may: the line can be held although the
	 * handler masked the device (the last sharer left before a forced
	 * thread finished, and genirq held the line after it).
	 */
	if (kdev->line_held || may_release_line)
		irq_release_held_line(kdev->irq, kdev);
	kdev->line_held = false;
	if (kdev->dev_masked) {
		if (!pci_check_and_unmask_intx(pdev))
			return VFIOKIT_STILL_PENDING;
		kdev->dev_masked = false;
	}
	kdev->masked = false;
	return VFIOKIT_UNMASKED;
}

/* ACTION_UNMASK, and a user 1->0 of INTx Disable; process context. */
void vfiokit_intx_unmask(struct vfiokit_pci_device *kdev)
{
	unsigned long flags;
	bool signal = false;

	/*
	 * With INTx off the device keeps INTx Disable set (vfio-pci lets it
	 * follow the user's virtual bit): nothing would handle the interrupt
	 * of a device that asserts on a shared line, and the spurious
	 * detector would disable the line for every sharer.
	 */
	spin_lock_irqsave(&kdev->lock, flags);
	if (kdev->enabled)
		signal = vfiokit_intx_unmask_locked(kdev, true) ==
			 VFIOKIT_STILL_PENDING;
	spin_unlock_irqrestore(&kdev->lock, flags);

	if (signal)
		vfiokit_intx_signal(kdev);
}

/* ACTION_MASK, and a user 0->1 of INTx Disable. */
void vfiokit_intx_mask(struct vfiokit_pci_device *kdev)
{
	struct pci_dev *pdev = kdev->core.pdev;
	unsigned long flags;

	/* With INTx off the device has INTx Disable set already. */
	spin_lock_irqsave(&kdev->lock, flags);
	kdev->unmask_deferred = false;	/* masked now: nothing to release */
	if (kdev->enabled && !kdev->masked) {
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

/*
 * Is the unmask eventfd being signalled by a user task (a write(2), or KVM's
 * vCPU thread on a guest EOI)? Anything else is an interrupt handler (ours,
 * hard or forced-threaded, signalling a trigger that is also the unmask
 * eventfd) or our own re-signal: releasing the line there lets a device that
 * still asserts fire again at once, in a loop that never gives user space
 * the CPU back.
 */
static bool vfiokit_intx_from_user(void)
{
	return in_task() && !(current->flags & PF_KTHREAD);
}

/*
 * The unmask eventfd (KVM's resamplefd): runs inside the eventfd's wait
 * queue, atomic, and must not signal. Non-zero schedules the thread below.
 */
static int vfiokit_intx_unmask_virqfd(void *opaque, void *data)
{
	struct vfiokit_pci_device *kdev = opaque;
	unsigned long flags;
	int ret;

	spin_lock_irqsave(&kdev->lock, flags);
	ret = vfiokit_intx_unmask_locked(kdev, vfiokit_intx_from_user());
	if (ret == VFIOKIT_STILL_PENDING)
		kdev->resignal = true;
	spin_unlock_irqrestore(&kdev->lock, flags);
	return ret != VFIOKIT_UNMASKED;
}

/* The unmask eventfd's thread: a deferred release, or a re-signal. */
static void vfiokit_intx_virqfd_thread(void *opaque, void *data)
{
	struct vfiokit_pci_device *kdev = opaque;
	unsigned long flags;
	bool signal;

	spin_lock_irqsave(&kdev->lock, flags);
	/* Only a device found still asserting is signalled again. */
	signal = kdev->resignal;
	kdev->resignal = false;
	if (kdev->unmask_deferred &&
	    vfiokit_intx_unmask_locked(kdev, true) == VFIOKIT_STILL_PENDING)
		signal = true;
	spin_unlock_irqrestore(&kdev->lock, flags);

	if (signal)
		vfiokit_intx_signal(kdev);
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
	/*
	 * vfio_pci_core's runtime PM masks only its own INTx: no INTx of
	 * ours on a device in low-power state (entry is refused while it is
	 * on, see vfiokit_pci_device_feature()).
	 */
	if (READ_ONCE(kdev->core.pm_runtime_engaged))
		return -EBUSY;

	name = kasprintf(GFP_KERNEL_ACCOUNT, "vfiokit-intx(%s)", pci_name(pdev));
	if (!name)
		return -ENOMEM;

	spin_lock_irqsave(&kdev->lock, flags);
	kdev->irq = pdev->irq;
	kdev->irqd = irq_get_irq_data(pdev->irq);
	kdev->exclusive = !kdev->pci_2_3;
	kdev->masked = kdev->core.virq_disabled;
	kdev->line_held = kdev->exclusive && kdev->masked;
	kdev->dev_masked = !kdev->exclusive && kdev->masked;
	kdev->unmask_deferred = false;
	WRITE_ONCE(kdev->trigger, trigger);
	kdev->enabled = true;
	if (!kdev->exclusive)
		pci_intx(pdev, !kdev->masked);
	WRITE_ONCE(kdev->intx_page->mode, kdev->exclusive ?
		   VFIOKIT_INTX_EXCLUSIVE : VFIOKIT_INTX_ADAPTIVE);
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
		WRITE_ONCE(kdev->trigger, NULL);
		kdev->masked = false;
		kdev->line_held = false;
		kdev->dev_masked = false;
		WRITE_ONCE(kdev->intx_page->mode, VFIOKIT_INTX_OFF);
		WRITE_ONCE(kdev->intx_page->mask_device, 0);
		spin_unlock_irqrestore(&kdev->lock, flags);
		kfree(name);
		return ret;
	}
	kdev->name = name;
	/*
	 * The mask the first interrupt will get if nobody joins or leaves: the
	 * line's IRQD_MASK_DEVICE now that our action is on it, unless an
	 * interrupt came meanwhile and the handler wrote what it did.
	 */
	spin_lock_irqsave(&kdev->lock, flags);
	if (!kdev->masked)
		WRITE_ONCE(kdev->intx_page->mask_device,
			   !kdev->exclusive && irqd_mask_device(kdev->irqd));
	spin_unlock_irqrestore(&kdev->lock, flags);
	return 0;
}

void vfiokit_intx_disable(struct vfiokit_pci_device *kdev)
{
	struct pci_dev *pdev = kdev->core.pdev;
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
	/*
	 * With no handler of ours left, INTx Disable stays set (see
	 * vfiokit_intx_unmask()), for an interrupt masked at the line too: a
	 * device that still asserts must not greet the line's next user with
	 * an interrupt nobody handles. Enabling INTx again sets the bit from
	 * the user's virtual one.
	 */
	if (!kdev->exclusive)
		pci_intx(pdev, 0);
	trigger = kdev->trigger;
	WRITE_ONCE(kdev->trigger, NULL);
	kdev->enabled = false;
	kdev->masked = false;
	kdev->line_held = false;
	kdev->dev_masked = false;
	kdev->unmask_deferred = false;
	kdev->resignal = false;
	WRITE_ONCE(kdev->intx_page->mode, VFIOKIT_INTX_OFF);
	WRITE_ONCE(kdev->intx_page->mask_device, 0);
	spin_unlock_irqrestore(&kdev->lock, flags);

	if (trigger)
		eventfd_ctx_put(trigger);
	kfree(kdev->name);
	kdev->name = NULL;
}

static int vfiokit_intx_set_trigger(struct vfiokit_pci_device *kdev, int fd)
{
	struct eventfd_ctx *trigger = NULL, *old;
	int ret;

	if (fd >= 0) {
		trigger = eventfd_ctx_fdget(fd);
		if (IS_ERR(trigger))
			return PTR_ERR(trigger);
	}

	if (!kdev->enabled) {
		/* As vfio-pci: fd -1 enables INTx without a trigger. */
		ret = vfiokit_intx_enable(kdev, trigger);
		if (ret && trigger)
			eventfd_ctx_put(trigger);
		return ret;
	}

	/* As vfio_intx_set_signal(): release the old one once unused. */
	old = kdev->trigger;
	WRITE_ONCE(kdev->trigger, trigger);
	if (old) {
		synchronize_irq(kdev->irq);
		vfio_virqfd_flush_thread(&kdev->unmask_virqfd);
		eventfd_ctx_put(old);
	}
	return 0;
}

/*
 * VFIO_DEVICE_SET_IRQS for the INTx index, from the one copy of the user's
 * header and data that vfiokit_pci_set_irqs() validated; under intx_lock. The
 * checks come in vfio_pci_set_irqs_ioctl()'s order, so errors match.
 */
int vfiokit_intx_set_irqs(struct vfiokit_pci_device *kdev, u32 flags,
			  unsigned int start, unsigned int count, void *data)
{
	u32 dtype = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
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
						  vfiokit_intx_virqfd_thread,
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
		/* MSI or MSI-X is on through the core. */
		if (kdev->core.irq_type != VFIO_PCI_NUM_IRQS ||
		    start != 0 || count != 1)
			return -EINVAL;
		if (dtype == VFIO_IRQ_SET_DATA_EVENTFD)
			return vfiokit_intx_set_trigger(kdev, *(s32 *)data);
		if (!kdev->enabled)
			return -EINVAL;
		/* Loopback, for testing. */
		if (dtype == VFIO_IRQ_SET_DATA_NONE || *(u8 *)data)
			vfiokit_intx_signal(kdev);
		return 0;
	}
	return -ENOTTY;
}

/*
 * Make the device's INTx Disable say @disabled, leaving the rest of the
 * command register as it is; nothing is written if it already does, or if
 * the device does not answer (all ones). Caller holds kdev->lock, which
 * every writer of the bit on our side takes.
 */
static void vfiokit_intx_write_disable(struct vfiokit_pci_device *kdev,
				       bool disabled)
{
	struct pci_dev *pdev = kdev->core.pdev;
	u16 cmd, want = disabled ? PCI_COMMAND_INTX_DISABLE : 0;

	lockdep_assert_held(&kdev->lock);
	if (pci_read_config_word(pdev, PCI_COMMAND, &cmd) || cmd == 0xffff)
		return;
	if ((cmd & PCI_COMMAND_INTX_DISABLE) != want)
		pci_write_config_word(pdev, PCI_COMMAND,
				      (cmd & ~PCI_COMMAND_INTX_DISABLE) | want);
}

/*
 * Put INTx Disable in the device back to what the mask state says. The
 * core's config write read-modify-writes the command register without our
 * lock; a handler masking or an unmask eventfd unmasking in between would
 * otherwise be undone by its stale copy of the bit (a lost mask storms, a
 * lost unmask loses the interrupt). Instead of keeping the line disabled
 * across the write, which would starve every sharer while the core sleeps
 * on memory_lock, repair the bit afterwards under kdev->lock.
 */
static void vfiokit_intx_sync_command(struct vfiokit_pci_device *kdev)
{
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	if (kdev->enabled && !kdev->exclusive)
		vfiokit_intx_write_disable(kdev, kdev->dev_masked);
	spin_unlock_irqrestore(&kdev->lock, flags);
}

/*
 * After a write through the config region that reached INTx Disable, under
 * intx_lock. vfio_pci_core emulates the bit: it has set virq_disabled to the
 * bit written and, with our pci_2_3 cleared, done nothing else. As on
 * vfio-pci only a change of that bit masks (0->1) or unmasks (1->0); any
 * other write to the register leaves the interrupt as it is.
 */
void vfiokit_intx_command_written(struct vfiokit_pci_device *kdev,
				  bool was_disabled)
{
	bool disabled = kdev->core.virq_disabled;

	lockdep_assert_held(&kdev->intx_lock);
	/*
	 * The core dropped memory_lock on return. Without it, a reset
	 * (VFIO_DEVICE_RESET, or a hot reset through another device of the
	 * set; both hold it for write) could run between its config write
	 * and ours, and our read-modify-write of the command register would
	 * land on a device in reset or undo the reset's restore.
	 */
	down_read(&kdev->core.memory_lock);
	if (disabled && !was_disabled)
		vfiokit_intx_mask(kdev);
	else if (!disabled && was_disabled)
		vfiokit_intx_unmask(kdev);
	vfiokit_intx_sync_command(kdev);
	up_read(&kdev->core.memory_lock);
}

/*
 * After the command register was restored behind our back, from the config
 * space saved before: by any reset of the device (VFIO_DEVICE_RESET, a hot
 * reset of its set, a reset through sysfs; from the PCI core's reset_done,
 * device lock held), and by the core's return from D3hot to D0 on a device
 * without No_Soft_Reset (a PM_CTRL write; memory_lock held for read). A
 * mask, an unmask, or INTx turned off or on that wrote INTx Disable since the
 * save has been undone. Most of those writers cannot wait for the reset or
 * the power-state change: the handler and the unmask eventfd run in atomic
 * context. Put the bit back to what the mask state says; a writer after this
 * point writes it right under the same lock. vfio-pci has no such step.
 */
void vfiokit_intx_restored(struct vfiokit_pci_device *kdev)
{
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	/*
	 * Not ours while closed, nor with MSI or MSI-X on (the restore put
	 * their INTx Disable back), nor without INTx masking.
	 */
	if (!kdev->opened || !kdev->pci_2_3 ||
	    (!kdev->enabled &&
	     READ_ONCE(kdev->core.irq_type) != VFIO_PCI_NUM_IRQS))
		goto out;
	/* With INTx off the bit stays set (vfiokit_intx_unmask()). */
	vfiokit_intx_write_disable(kdev, !kdev->enabled || kdev->dev_masked);
out:
	spin_unlock_irqrestore(&kdev->lock, flags);
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
