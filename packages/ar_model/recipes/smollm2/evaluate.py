"""Measure the recipe's merged model on what it never saw: held-out images, held-out report text, generation.

    python packages/ar_model/recipes/smollm2/evaluate.py OUT --base OUT/base-llm [--quick]

Writes OUT/results.json, OUT/results.md and OUT/generation_grid.png:
- understanding: greedy answer to the modality question for every held-out image (codes from OUT/codes, the same
  pretokenize door as training); accuracy = the first modality the answer names is the image's (records.py's
  patterns); chance = 1 / number of modalities. Caption answers are shown for one image per modality.
- language kept: perplexity of the base and the merged model on held-out IU chest X-ray report text (the last
  reports of torchxrayvision's NLMCXR archive; the recipe never trains on report text), and three fixed text-only
  questions answered greedily by both, side by side.
- generation: images per modality prompt at CFG 1 and 3 (a grid PNG), and the share that a linear probe on the
  small MedITok's encoder features of real *train-split* images assigns to the prompted modality (the probe's own
  accuracy on real held-out images is reported beside it, so a weak probe is visible).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import (  # noqa: E402
    CAPTION_QUESTION,
    MODALITY_NAMES,
    MODALITY_QUESTION,
    answer_modality,
    generation_prompt,
    row_key,
)

TEXT_QUESTIONS = (
    "What is a chest X-ray used for?",
    "Name two common causes of a cough.",
    "What does a radiologist do?",
)
N_REPORTS = 100
CONTEXT = 256


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def perplexity(llm, tokenizer, texts: list[str], context: int = CONTEXT) -> dict[str, float]:
    """exp(mean token NLL) of ``texts`` (each <bos> + text, truncated to ``context`` tokens), one text at a time:
    ``full`` over the whole vocabulary, ``text`` over the text tokenizer's ids only (what meditok-ar's text
    generation samples from: it masks the image ids; for the base model both are the same)."""
    nll = {"full": 0.0, "text": 0.0}
    total_tokens = 0
    llm.eval()
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"][: context - 1]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = llm(input_ids=x).logits[0, :-1].float()
        nll["full"] += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        nll["text"] += float(torch.nn.functional.cross_entropy(logits[:, : len(tokenizer)], x[0, 1:], reduction="sum"))
        total_tokens += len(ids) - 1
    return {k: math.exp(v / total_tokens) for k, v in nll.items()}


def chat_answer(llm, tokenizer, question: str, max_new_tokens: int) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.no_grad():
        out = llm.generate(
            **prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def merged_answer(model, question: str, max_new_tokens: int) -> str:
    """The merged model's greedy answer through its text door (meditok-ar's generate_text, which samples from the text
    ids only, as `answer` and the vLLM plugin do), with the same chat template as the base's answer."""
    from meditok.ar.generation import generate_text

    ids = generate_text(model, model.builder.text_prompt(question), max_new_tokens=max_new_tokens)
    return model.text_tokenizer.decode(ids, skip_special_tokens=True).strip()


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression (L2, LBFGS) on standardised features."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(features), labels) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def image_tensors(tok, rows: list[dict]) -> torch.Tensor:
    """Real manifest rows through the model's image-input contract (eval mode), [N, 3, H, W] in [-1, 1]."""
    from meditok.data import ManifestRow, Preprocess, load_row

    prepare = Preprocess.from_spec(tok.image_input)
    return torch.stack([prepare(load_row(ManifestRow.from_dict(row))) for row in rows])


def grid_png(images: dict[str, dict[float, list]], path: Path, scale: int = 2) -> None:
    from PIL import Image, ImageDraw

    modalities = list(images)
    cfgs = list(next(iter(images.values())))
    n = len(images[modalities[0]][cfgs[0]])
    side = images[modalities[0]][cfgs[0]][0].width * scale
    label_w, gap, head = 110, 12, 18
    width = label_w + len(cfgs) * n * side + (len(cfgs) - 1) * gap
    canvas = Image.new("RGB", (width, head + len(modalities) * side), "white")
    draw = ImageDraw.Draw(canvas)
    for c, cfg in enumerate(cfgs):
        draw.text((label_w + c * (n * side + gap), 3), f"CFG {cfg:g}", fill="black")
    for r, modality in enumerate(modalities):
        draw.text((4, head + r * side + side // 2 - 6), MODALITY_NAMES[modality], fill="black")
        for c, cfg in enumerate(cfgs):
            for i, picture in enumerate(images[modality][cfg]):
                x = label_w + c * (n * side + gap) + i * side
                canvas.paste(picture.convert("RGB").resize((side, side), Image.NEAREST), (x, head + r * side))
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meditok.ar.codes import load_code_table
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import iu_xray_reports, report_texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, help="the base LLM folder (default OUT/base-llm)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--variant", default="", help="the AR stages' suffix (recipe.py --layout compact: -compact-sum)"
    )
    args = parser.parse_args(argv)
    variant = args.variant
    out = args.out
    quick = args.quick
    torch.manual_seed(0)
    model = MedITokAR.from_pretrained(out / f"merged{variant}")
    tok = model.image_tokenizer
    size = tok.image_input.size if isinstance(tok.image_input.size, int) else tok.image_input.size[0]
    table = load_code_table(out / "codes")
    held_out = read_jsonl(out / "split" / "heldout.jsonl")
    train_rows = read_jsonl(out / "split" / "train.jsonl")
    if quick:
        held_out = held_out[:: max(1, len(held_out) // 6)][:6]
    # Understanding
    per_modality: dict[str, list[int]] = defaultdict(list)
    examples: dict[str, dict[str, str]] = {}
    for row in held_out:
        entry = table[row_key(row)]
        answer = model.answer(entry["codes"], MODALITY_QUESTION, grid=tuple(entry["grid"]), max_new_tokens=16)
        per_modality[row["modality"]].append(int(answer_modality(answer) == row["modality"]))
        if row["modality"] not in examples:
            cap = model.answer(entry["codes"], CAPTION_QUESTION, grid=tuple(entry["grid"]), max_new_tokens=24)
            examples[row["modality"]] = {"file": Path(row["path"]).name, "modality_answer": answer, "caption": cap}
    hits = [h for v in per_modality.values() for h in v]
    understanding = {
        "accuracy": sum(hits) / len(hits),
        "macro_accuracy": float(np.mean([np.mean(v) for v in per_modality.values()])),
        "n": len(hits),
        "chance": 1 / len(MODALITY_NAMES),
        "per_modality": {m: {"accuracy": float(np.mean(v)), "n": len(v)} for m, v in sorted(per_modality.items())},
        "examples": examples,
    }
    print(json.dumps({"understanding": {k: understanding[k] for k in ("accuracy", "macro_accuracy", "n")}}))

    # Language kept
    base_dir = args.base or out / "base-llm"
    text_tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reports = report_texts(iu_xray_reports())[-(8 if quick else N_REPORTS) :]
    language = {"reports": len(reports), "context": CONTEXT}
    base_ppl, merged_ppl = perplexity(base, text_tok, reports), perplexity(model.llm, text_tok, reports)
    language["base_perplexity"] = base_ppl["text"]
    language["merged_perplexity"] = merged_ppl["text"]  # over text ids, as the model writes text
    language["merged_perplexity_full_vocab"] = merged_ppl["full"]  # image ids included in the softmax
    language["ratio"] = language["merged_perplexity"] / language["base_perplexity"]
    new_tokens = 12 if quick else 48
    language["answers"] = [{"question": q, "base": chat_answer(base, text_tok, q, new_tokens),
                            "merged": merged_answer(model, q, new_tokens)} for q in TEXT_QUESTIONS]  # fmt: skip
    del base
    print(json.dumps({k: v for k, v in language.items() if "perplexity" in k or k == "ratio"}))

    # Generation and the probe
    modalities = sorted({row["modality"] for row in train_rows})
    index = {m: i for i, m in enumerate(modalities)}
    per_prompt = 1 if quick else 4
    cfgs = (1.0, 3.0)
    pictures: dict[str, dict[float, list]] = {m: {} for m in modalities}
    for cfg in cfgs:
        prompts = [generation_prompt(m) for m in modalities for _ in range(per_prompt)]
        made = model.generate_image(prompts, size=size, cfg_scale=cfg, temperature=1.0, seed=0)
        made = made if isinstance(made, list) else [made]
        for i, picture in enumerate(made):
            pictures[modalities[i // per_prompt]].setdefault(cfg, []).append(picture)
    grid_png(pictures, out / f"generation_grid{variant}.png")
    with torch.no_grad():
        train_x = tok.features(image_tensors(tok, train_rows)).float()
        held_x = tok.features(image_tensors(tok, held_out)).float()
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        probe = fit_probe((train_x - mean) / std, torch.tensor([index[r["modality"]] for r in train_rows]),
                          len(modalities))  # fmt: skip
        held_pred = probe((held_x - mean) / std).argmax(1)
        held_true = torch.tensor([index.get(r["modality"], -1) for r in held_out])
        generation = {"size": size, "per_prompt": per_prompt, "chance": 1 / len(modalities),
                      "probe_heldout_real_accuracy": float((held_pred == held_true).float().mean())}  # fmt: skip
        for cfg in cfgs:
            x = torch.stack([tok.prepare(p)[0] for m in modalities for p in pictures[m][cfg]])
            pred = probe((tok.features(x).float() - mean) / std).argmax(1)
            want = torch.tensor([index[m] for m in modalities for _ in range(per_prompt)])
            generation[f"prompted_modality_share_cfg{cfg:g}"] = float((pred == want).float().mean())
    print(json.dumps(generation))

    train_log = json.loads((out / f"ar{variant}" / "train_log.json").read_text())
    losses = train_log["losses"]
    window = max(1, len(losses) // 10)
    training = {"steps": len(losses), "trainable_parameters": train_log.get("trainable_parameters"),
                "loss_first": float(np.mean(losses[:window])), "loss_last": float(np.mean(losses[-window:])),
                "seconds": train_log["seconds"], "tokens": train_log["tokens"]}  # fmt: skip
    cost = json.loads((out / "cost.json").read_text()) if (out / "cost.json").exists() else {}
    results = {"understanding": understanding, "language": language, "generation": generation,
               "training": training, "cost": cost}  # fmt: skip
    (out / f"results{variant}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"results{variant}.md").write_text(markdown(results))
    print(f"results: {out / f'results{variant}.md'}, {out / f'generation_grid{variant}.png'}")
    return 0


def markdown(r: dict) -> str:
    u, lang, g, t = r["understanding"], r["language"], r["generation"], r["training"]
    lines = ["# SmolLM2 + MedITok recipe: results", "",
             f"Understanding (held-out files, {u['n']} images): modality accuracy **{u['accuracy']:.3f}** "
             f"(macro over modalities {u['macro_accuracy']:.3f}; chance {u['chance']:.3f})", "",
             "| modality | held-out images | accuracy | example answer | example caption |", "|---|---|---|---|---|"]  # fmt: skip
    for m, v in u["per_modality"].items():
        ex = u["examples"].get(m, {})
        lines.append(
            f"| {m} | {v['n']} | {v['accuracy']:.2f} | {ex.get('modality_answer', '')} | {ex.get('caption', '')} |"
        )
    lines += ["", f"Language kept ({lang['reports']} held-out IU X-ray reports, {lang['context']}-token context): "
              f"perplexity base {lang['base_perplexity']:.2f}, merged {lang['merged_perplexity']:.2f} "
              f"(ratio {lang['ratio']:.3f}; over the text ids, as text generation samples; with the image ids in the "
              f"softmax the merged model's is {lang['merged_perplexity_full_vocab']:.2f})", "", "| question | base | merged |", "|---|---|---|"]  # fmt: skip
    for a in lang["answers"]:
        lines.append(f"| {a['question']} | {a['base'].replace(chr(10), ' ')} | {a['merged'].replace(chr(10), ' ')} |")
    lines += ["", f"Generation ({g['per_prompt']} images per modality prompt, {g['size']} px; grid: generation_grid.png): "
              f"share assigned to the prompted modality by a linear probe on real train-split features: "
              + ", ".join(f"CFG {k.rsplit('cfg', 1)[1]} **{v:.3f}**" for k, v in g.items() if k.startswith("prompted"))
              + f" (chance {g['chance']:.3f}; the probe's accuracy on real held-out images {g['probe_heldout_real_accuracy']:.3f})",
              "", f"Training: {t['steps']} steps, loss {t['loss_first']:.3f} -> {t['loss_last']:.3f}, "
              f"{t['trainable_parameters']:,} trainable parameters, {t['seconds']:.0f} s, {t['tokens']:,} tokens", "",
              "| stage | wall s | peak RSS MB |", "|---|---|---|"]  # fmt: skip
    for name, c in r["cost"].items():
        lines.append(f"| {name} | {c['seconds']} | {c['peak_rss_mb']} |")
    if r["cost"]:
        lines.append(f"| total | {sum(c['seconds'] for c in r['cost'].values()):.0f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
