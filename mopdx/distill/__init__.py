"""Distillation from frozen teachers: the MOPD LightningModule and the rollout -> teacher-prefill pipeline."""
