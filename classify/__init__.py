"""Finetuning and evaluation of the ConvNeXt V2 classifier: the task finetune.py runs."""
