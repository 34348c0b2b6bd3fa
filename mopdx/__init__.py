"""mopdx: multi-teacher on-policy distillation (MOPD) and its variants; the framework (see README, "Where things live")."""
