"""Measuring models beyond perplexity (`centelha.evaluate`): generation metrics
(`generation`, `text_metrics`), benchmarks scored by log-likelihood (`loglikelihood`,
`suite`), bias pairs (`pairs`), the lm-evaluation-harness adapter (`harness`) and
side-by-side comparison (`compare`)."""
