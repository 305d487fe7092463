"""Feature steering (SAE-LAPE `intervention.py`; methods.md §7.4): `h += sum_f m * maxact_f * W_dec[f]` at the hook.

For a target language t and the SAE of layer l, the steering vector is

    v_t = sum_{f in F_t,l} (m * maxact_f) * W_dec[f]                    [d_model]

with `maxact_f` the feature's largest activation in the statistics
(`final_indice_global_max_active`) and `m` the multiplier (positive to steer
towards t, negative to suppress it). It is added to the SAE's hook point
(`mlp.out` of layer l, before Gemma's post-norm) at every token, prompt and
generated (`intervention.py`'s `sae_features_intervene_all_token`), or only at
the last position of the prompt (`..._last_token`, `where="last"`).

The addition is a decoder `splice`: the vectors are data (`splice_args`), so
every target, multiplier and prompt batch reuses one compiled program, and each
row of a batch can be steered differently. `generate_steered` is greedy
`jlang.models.generate.generate` (KV cache, transformers' repetition penalty)
with that splice, scoped to every token or to the prompt's last one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from jlang.evals.langid import Py3LangID
from jlang.models.decoder import SPLICE_POINTS
from jlang.models.generate import generate
from jlang.sae.lape import SAELapeFeatures
from jlang.sae.model import SAE, SAEError

WHERE = ("all", "last")


def steering_vector(sae: SAE, features: SAELapeFeatures, language: str, multiplier: float) -> np.ndarray:
    """float32 `[d_in]`: `sum_f (multiplier * maxact_f) * W_dec[f]` over `language`'s features in this SAE's layer."""
    if sae.config.layer not in features.layers:
        raise SAEError(f"{sae} reads layer {sae.config.layer}; the features are of layers {features.layers}")
    k, i = features.index(language), features.layers.index(sae.config.layer)
    ids, maxact = features.features[k][i], features.max_active[k][i]
    w = np.asarray(sae.params["W_dec"], np.float32)
    if len(ids) and max(ids) >= w.shape[0]:
        raise SAEError(f"feature ids up to {max(ids)} but the SAE has {w.shape[0]} features: another SAE's features")
    return (float(multiplier) * maxact.astype(np.float32)) @ w[ids] if len(ids) else np.zeros(w.shape[1], np.float32)


def vector_table(vectors: np.ndarray, layer: int, num_layers: int) -> np.ndarray:
    """`[rows, L, d]` with each row's vector at `layer` and zeros elsewhere (the splice's argument)."""
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    table = np.zeros((vectors.shape[0], num_layers, vectors.shape[1]), np.float32)
    table[:, layer] = vectors
    return table


@functools.cache
def steer_splice(hook_point: str) -> Callable:
    """The splice adding `args["vectors"][row, layer] [b, L, d]` at `hook_point` where `args["where"] [b, t]`."""
    if hook_point not in SPLICE_POINTS:
        raise SAEError(f"hook point must be one of {SPLICE_POINTS}, got {hook_point!r}")

    def splice(point, value, layer, args):
        if point != hook_point:
            return value
        add = args["vectors"][:, layer][:, None, :].astype(value.dtype)  # [b, 1, d]
        return value + jnp.where(args["where"][..., None], add, jnp.zeros_like(add))

    return splice


def generate_steered(
    model,
    prompts: Sequence[str],
    vectors: np.ndarray,
    *,
    hook_point: str = "mlp.out",
    where: str = "all",
    max_new_tokens: int = 32,
    repetition_penalty: float = 1.1,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations of `prompts`, row i steered by `vectors[i] [L, d_model]` (zeros: no steering).

    Args:
      vectors: `[len(prompts), L, d_model]` added at `hook_point` of each layer (`vector_table`).
      where: "all" (every prompt and generated token) or "last" (the prompt's last token only).
    """
    if where not in WHERE:
        raise SAEError(f"where must be one of {WHERE}, got {where!r}")
    cfg = model.config
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape != (len(prompts), cfg.num_layers, cfg.d_model):
        raise SAEError(f"vectors must be [{len(prompts)}, {cfg.num_layers}, {cfg.d_model}], got {vectors.shape}")
    return generate(
        model,
        list(prompts),
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        splice=steer_splice(hook_point),
        splice_args={"vectors": vectors},
        splice_scope=where,
        batch_size=batch_size,
    )


def steering_success(
    model,
    sae: SAE,
    features: SAELapeFeatures,
    prompts: Sequence[str],
    targets: Sequence[str],
    multipliers: Sequence[float],
    *,
    identifier=None,
    max_new_tokens: int = 24,
    repetition_penalty: float = 1.1,
    where: str = "all",
    batch_size: int = 16,
) -> dict:
    """Steer every prompt towards every target at every multiplier; identify the continuations' language.

    Returns {"rows": [{prompt, target, multiplier, text, language}], "success": {target: {m: share identified
    as target}}, "baseline": {target: share of unsteered continuations already in target}}.
    """
    identify = identifier or Py3LangID(features.languages)
    L = model.config.num_layers
    jobs = [(p, None, 0.0) for p in prompts]
    jobs += [(p, t, float(m)) for t in targets for m in multipliers for p in prompts]
    table = np.zeros((len(jobs), L, model.config.d_model), np.float32)
    for j, (_, t, m) in enumerate(jobs):
        if t is not None:
            table[j] = vector_table(steering_vector(sae, features, t, m), sae.config.layer, L)[0]
    texts = generate_steered(
        model,
        [p for p, _, _ in jobs],
        table,
        hook_point=sae.config.hook_point,
        where=where,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        batch_size=batch_size,
    )
    langs = identify(texts)
    rows = [
        {"prompt": p, "target": t, "multiplier": m, "text": x, "language": g}
        for (p, t, m), x, g in zip(jobs, texts, langs)
    ]
    base = langs[: len(prompts)]
    success = {
        t: {
            m: float(np.mean([r["language"] == t for r in rows if r["target"] == t and r["multiplier"] == m]))
            for m in map(float, multipliers)
        }
        for t in targets
    }
    baseline = {t: float(np.mean([g == t for g in base])) for t in targets}
    return {
        "rows": rows,
        "success": success,
        "baseline": baseline,
        "identifier": getattr(identify, "name", "identifier"),
    }
