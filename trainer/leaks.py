"""Which update schedules leak gradient, worked out from how `.backward()` accumulates.

`loss.backward()` adds into `.grad` of every parameter that requires grad and that the loss
reaches. A network's optimizer step "leaks" when its `.grad` holds gradient from the other
network's loss at the moment it steps. Reasoning per schedule:

* isolation `freeze` / `autograd`: G's loss never writes D's `.grad` (D is frozen, or only
  G's parameters are asked for) and D's loss never writes G's `.grad` (the fake batch is
  detached, or only D's parameters are asked for). Nothing foreign can arrive: no leak.
* isolation `none`, order `d_first` / `g_first`: G's backward writes D's `.grad` and D's
  backward writes G's `.grad` (the fake batch is not detached), but each write happens in
  the *other* network's cycle. With `zero_grad: before` each cycle starts by wiping it: no
  leak. With `zero_grad: after` the network was zeroed right after its own last step, so the
  foreign gradient written since then is still there when its next cycle accumulates on top
  and steps: both D and G leak (the seed essay's broken snippet).
* isolation `none`, order `simultaneous`: both losses are backpropagated inside one joint
  cycle, so each network's step consumes the other's loss gradient whatever the zero_grad
  placement: both leak.

This module is the prediction; `trainer.audit` measures what really lands in `.grad`, and
the tests check that the two agree.
"""

from __future__ import annotations


def leaking_networks(*, order: str, isolation: str, zero_grad: str) -> tuple[str, ...]:
    """The networks ("d", "g") whose optimizer steps on foreign gradient under this schedule."""
    if isolation != "none":
        return ()
    if order == "simultaneous" or zero_grad == "after":
        return ("d", "g")
    return ()
