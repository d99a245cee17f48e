"""LoRA fine-tuning of the GGUF base model: conversion, training, GGUF adapter export."""
