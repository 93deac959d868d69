"""Write the Learn page's static figures to assets/figures/ (run from the repo root).

Plain SVG written by hand, no plotting dependency. The batch layout is drawn from the
engine's own `dynsdpb.engine.layout.BatchLayout`, so the picture is what training does.

    python scripts/make_figures.py
"""
from pathlib import Path

from dynsdpb.engine.layout import BatchLayout

OUT = Path(__file__).resolve().parent.parent / "assets" / "figures"
# The app's colours (app/common.py): new samples in the dynsdpb red, carried ones orange.
NEW, CARRIED, VANILLA, INK, GREY = "#d62728", "#ff7f0e", "#5f6b7a", "#111111", "#888888"
FONT = "font-family='Helvetica, Arial, sans-serif'"


def svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' {FONT}>\n<title>{title}</title>\n"
            "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
            f"markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
            f"fill='{GREY}'/></marker></defs>\n"
            f"<rect width='{width}' height='{height}' fill='white'/>\n" + "\n".join(body)
            + "\n</svg>\n")


def text(x, y, s, size=13, anchor="start", color=INK, weight="normal") -> str:
    return (f"<text x='{x}' y='{y}' font-size='{size}' text-anchor='{anchor}' fill='{color}' "
            f"font-weight='{weight}'>{s}</text>")


def batch_layout(n=10, chunk=4, steps=4) -> str:
    """Steps 1..steps of a distilling arm: each row is one step's batch, the carried half
    under the previous step's new half, the sample ids inside, epoch boundaries dotted."""
    lay = BatchLayout(n, chunk, seed=0, distill=True)
    cell, left, top, row = 34, 90, 58, 54
    width = left + steps * chunk * cell + 40
    height = top + steps * row + 70
    body = [text(20, 28, "DLB / DynSDPB batch layout: step t trains on chunk t-1 (carried) "
                 "+ chunk t (new)", 15, weight="bold")]
    for t in range(steps):
        b = lay.batch(t)
        y = top + t * row
        body.append(text(20, y + 22, f"step {t + 1}", 13))
        start = (t - 1) * chunk if b.carried else t * chunk
        for j, sid in enumerate(b.carried + b.new):
            x = left + (start + j) * cell
            carried = j < len(b.carried)
            color = CARRIED if carried else NEW
            body.append(f"<rect x='{x + 2}' y='{y}' width='{cell - 4}' height='32' rx='4' "
                        f"fill='{color}' fill-opacity='{0.35 if carried else 0.8}' "
                        f"stroke='{color}'/>")
            body.append(text(x + cell / 2, y + 21, sid, 13, "middle",
                             INK if carried else "white"))
        if b.carried:
            x = left + (start + chunk / 2) * cell
            body.append(f"<line x1='{x}' y1='{y - row + 34}' x2='{x}' y2='{y - 2}' "
                        f"stroke='{GREY}' stroke-width='1.5' marker-end='url(#arrow)'/>")
    for e in range(1, steps * chunk // n + 1):        # boundaries inside the drawing
        x = left + e * n * cell
        body.append(f"<line x1='{x}' y1='{top - 8}' x2='{x}' y2='{top + steps * row - 10}' "
                    f"stroke='{GREY}' stroke-dasharray='4 4'/>")
        body.append(text(x + 4, top - 12, f"epoch {e + 1} starts", 11, color=GREY))
    ly = top + steps * row + 14
    for i, (color, op, label) in enumerate([
            (NEW, 0.8, "new: cross-entropy; its logits are kept for the next step"),
            (CARRIED, 0.35, "carried: cross-entropy + KD toward the kept logits")]):
        y = ly + i * 24
        body.append(f"<rect x='{left}' y='{y}' width='18' height='16' rx='3' fill='{color}' "
                    f"fill-opacity='{op}' stroke='{color}'/>")
        body.append(text(left + 26, y + 13, label, 12))
    return svg(width, height, body, "DLB batch layout")


def one_step() -> str:
    """What one DynSDPB step computes, left to right."""
    W, H = 900, 300
    b = [text(20, 28, "One DynSDPB step: the teacher is the same model, one step earlier", 15,
              weight="bold")]

    def box(x, y, w, h, lines, color):
        out = [f"<rect x='{x}' y='{y}' width='{w}' height='{h}' rx='8' fill='{color}' "
               f"fill-opacity='0.12' stroke='{color}' stroke-width='1.5'/>"]
        for i, s in enumerate(lines):
            out.append(text(x + w / 2, y + 24 + i * 18, s, 13 if i == 0 else 12, "middle",
                            weight="bold" if i == 0 else "normal"))
        return out

    def arrow(x1, y1, x2, y2):
        return (f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='{GREY}' "
                "stroke-width='1.5' marker-end='url(#arrow)'/>")

    b += box(20, 60, 170, 70, ["batch of step t", "carried half + new half"], VANILLA)
    b += box(240, 60, 150, 70, ["model (step t)", "one forward pass"], NEW)
    b += box(440, 50, 190, 90, ["logits", "carried: student for KD", "new: kept in the cache"],
             NEW)
    b += box(440, 180, 190, 90, ["logits cache", "from step t-1:", "the teacher (no grad)"],
             CARRIED)
    b += box(680, 50, 200, 220, ["loss", "CE on the whole batch", "+ alpha * tau^2 * KL(",
                                 "  teacher_tau || student_tau)", "on the carried half;",
                                 "alpha, tau per sample from", "the teacher's uncertainty",
                                 "and margin (DynSDPB);", "fixed in DLB"], NEW)
    b += [arrow(190, 95, 238, 95), arrow(390, 95, 438, 95), arrow(630, 95, 678, 110),
          arrow(630, 225, 678, 200), arrow(535, 140, 535, 178)]
    b.append(text(527, 165, "new half's logits, for step t+1", 11, "end", GREY))
    return svg(W, H, b, "One DynSDPB step")


def token_alignment() -> str:
    """Decoders (method.md §5): the causal shift, prompt masking, and KD on the longest common
    prefix of the cached and the current target ids (output-mismatch alignment)."""
    W, H = 900, 345
    cell, x0 = 56, 190        # token width; where the first input token starts
    prompt = ["<user>", "what", "is", "7", "plus", "5", "<bot>"]
    cached = ["the", "answer", "is", "12", "</s>"]
    current = ["the", "answer", "was", "12", "</s>"]    # diverges at the 3rd target token
    n_common = next((i for i, (a, b) in enumerate(zip(cached, current)) if a != b),
                    min(len(cached), len(current)))
    b = [text(20, 28, "Token-level KD for decoders: target tokens only, on the longest common "
              "prefix of cached and current targets", 15, weight="bold")]

    def tok(x, y, s, fill, op, stroke, dash=False, ink=INK):
        d = " stroke-dasharray='4 3'" if dash else ""
        return [f"<rect x='{x + 2}' y='{y}' width='{cell - 4}' height='28' rx='4' "
                f"fill='{fill}' fill-opacity='{op}' stroke='{stroke}'{d}/>",
                text(x + cell / 2, y + 19, s.replace("<", "&lt;").replace(">", "&gt;"), 12,
                     "middle", ink)]

    # row 1: the sequence the model reads (prompt + current target)
    y1 = 62
    b.append(text(20, y1 + 19, "input ids (step t)", 13))
    for j, s in enumerate(prompt + current):
        is_prompt = j < len(prompt)
        b += tok(x0 + j * cell, y1, s,
                 GREY if is_prompt else NEW, 0.15 if is_prompt else 0.25,
                 GREY if is_prompt else NEW)
    # row 2: the causal shift: the logits at position j are scored against token j + 1, so
    # the labels move one to the left; prompt positions carry -100 (no CE, no KD)
    y2 = y1 + 62
    b.append(text(20, y2 + 19, "labels after the shift", 13))
    n_in = len(prompt) + len(current)
    for j in range(n_in - 1):
        lab = (prompt + current)[j + 1]
        masked = j + 1 < len(prompt)
        b += tok(x0 + j * cell, y2, "-100" if masked else lab, GREY if masked else NEW,
                 0.1 if masked else 0.25, GREY if masked else NEW, dash=masked,
                 ink=GREY if masked else INK)
        if not masked:
            b.append(f"<line x1='{x0 + (j + 1) * cell + cell / 2}' y1='{y1 + 30}' "
                     f"x2='{x0 + j * cell + cell / 2 + 6}' y2='{y2 - 2}' stroke='{GREY}' "
                     "stroke-width='1.2' marker-end='url(#arrow)'/>")
    # rows 3-4: cached vs current target ids, under the positions that predict them
    xt = x0 + (len(prompt) - 1) * cell
    y3, y4 = y2 + 74, y2 + 120
    b.append(text(20, y3 + 19, "cached targets (t-1)", 13))
    b.append(text(20, y4 + 19, "current targets (t)", 13))
    for i, s in enumerate(cached):
        ok = i < n_common
        b += tok(xt + i * cell, y3, s, CARRIED if ok else GREY, 0.35 if ok else 0.1,
                 CARRIED if ok else GREY, dash=not ok, ink=INK if ok else GREY)
    for i, s in enumerate(current):
        ok = i < n_common
        b += tok(xt + i * cell, y4, s, NEW if ok else GREY, 0.8 if ok else 0.1,
                 NEW if ok else GREY, dash=not ok, ink="white" if ok else GREY)
    xe = xt + n_common * cell
    b.append(f"<line x1='{xe}' y1='{y3 - 10}' x2='{xe}' y2='{y4 + 36}' stroke='{INK}' "
             "stroke-width='2' stroke-dasharray='5 4'/>")
    b.append(text(xe + 6, y3 - 14, "first difference: KD stops here", 12))
    b.append(text(x0, y3 + 19, "the teacher's cache keeps the ids it was computed on", 12,
                  color=GREY))
    b.append(text(20, y4 + 62, f"KD on the common prefix ({n_common} tokens here): alpha * "
                  "tau^2 * KL(cached || current) at each of its tokens; CE on every current "
                  "target token.", 12))
    b.append(text(20, y4 + 80, "Plain fine-tuning never changes the targets, so every target "
                  "token is distilled; the rule matters when targets are regenerated.", 12))
    return svg(W, H, b, "Token-level KD and output alignment")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, content in (("dlb-batch-layout.svg", batch_layout()),
                          ("dynsdpb-step.svg", one_step()),
                          ("token-kd-alignment.svg", token_alignment())):
        (OUT / name).write_text(content, encoding="utf-8")
        print(OUT / name)
