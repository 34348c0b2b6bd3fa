"""Co-distillation of trainable peers (OPCoD's loop): the module, the strategy hooks it calls, privileged contexts."""
