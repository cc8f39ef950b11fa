"""Readable tables for the bench command (the JSON output carries the same numbers)."""

from __future__ import annotations

ROWS = (
    ("device", "device", "{}"),
    ("threads", "threads", "{}"),
    ("text encode (ms)", "text_ms", "{:.1f}"),
    ("UNet, 1 call (ms)", "unet_ms", "{:.1f}"),
    ("decode (ms)", "decode_ms", "{:.1f}"),
    ("image encode (ms)", "encode_image_ms", "{:.1f}"),
    ("student 1 step, end to end (ms)", "student_ms", "{:.1f}"),
    ("student 2 steps (ms)", "student_2step_ms", "{:.1f}"),
    ("student 4 steps (ms)", "student_4step_ms", "{:.1f}"),
    ("teacher 50 DDIM + CFG (ms)", "teacher_ms", "{:.0f}"),
    ("speedup 1 step vs teacher", "speedup_vs_teacher", "{:.1f}x"),
    ("speedup 2 steps vs teacher", "speedup_2step_vs_teacher", "{:.1f}x"),
    ("speedup 4 steps vs teacher", "speedup_4step_vs_teacher", "{:.1f}x"),
    ("student steps per typed frame", "keystroke_steps", "{}"),
    ("preview steps (0: none)", "keystroke_preview_steps", "{}"),
    ("keystroke p50 at 20 keys/s (ms)", "keystroke_p50_ms", "{:.1f}"),
    ("keystroke p95 at 20 keys/s (ms)", "keystroke_p95_ms", "{:.1f}"),
    ("keystroke p50, burst typing (ms)", "keystroke_burst_p50_ms", "{:.1f}"),
    ("keystroke p95, burst typing (ms)", "keystroke_burst_p95_ms", "{:.1f}"),
    ("last key to full-step frame (ms)", "keystroke_settle_ms", "{:.1f}"),
    ("peak RSS (MiB)", "peak_rss_mb", "{:.0f}"),
    ("load + export + warm-up (s)", "load_s", "{:.1f}"),
)


def table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(header[i]), *(len(cells[i - 1]) if i else len(name)
                                     for name, cells in rows)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for name, cells in rows:
        values = [name, *cells]
        lines.append("  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)))
    return "\n".join(lines)


def live_report(report: dict) -> str:
    """One column per backend, then the typing counts and what was measured on what."""
    results = report["results"]
    rows = [(name, [fmt.format(r[key]) for r in results]) for name, key, fmt in ROWS]
    for mode in ("paced", "burst"):
        rows.append((f"frames delivered / dropped ({mode})",
                     [f"{r['keystroke'][mode]['frames_delivered']} / "
                      f"{r['keystroke'][mode]['requests_dropped']}" for r in results]))
    text = table(rows, ["", *[r["backend"] for r in results]])
    first = results[0]
    machine = first["machine"]
    gpu = f", gpu: {machine['gpu']}" if "gpu" in machine else ""
    notes = [f"model: {first['model']} {first['label']}".rstrip(),
             f"image {first['image_size']} px, latent {first['latent_size']}, "
             f"medians of {first['repeats']} repeats; teacher: {first['teacher_label']}",
             f"cpu: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, load "
             f"{machine.get('load_avg_1m', '?')}, float32 matmul "
             f"{machine.get('cpu_sgemm_gflops', '?')} GFLOP/s){gpu}"]
    return text + "\n\n" + "\n".join(notes)


def gpu_report(report: dict) -> str:
    """One row per variant of the random-weight arch: ms per frame and frames/s."""
    rows = [(v["variant"], [f"{v['frame_ms']:.2f}", f"{v['fps']:.1f}", v.get("note", "")])
            for v in report["variants"]]
    sizes = " and ".join(str(size) for size in report.get("image_sizes", [report["image_size"]]))
    head = f"{report['arch']} at {sizes} px, batch 1, {report['dtype']}, " \
           f"device {report['device']}"
    return head + "\n" + table(rows, ["variant", "ms/frame", "frames/s", "note"])
