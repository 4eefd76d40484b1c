"""A simple attribute classifier for world images (Python, for the PyTorch-side checks
of generated images; the C evaluation has its own). For each ground-truth object it looks
at the object's half of the image (pairs) or the whole image (one shape): pixels whose
nearest palette entry (the 6 colours, 4 greys) is a colour, within distance 80; the most
frequent colour is the object's colour; its pixels' bounding box gives size (extent >= 18:
large) and, through the centroid, the nearest of the 5 positions; the shape is the
template (world.shape_mask at that box) with the best IoU."""
import numpy as np

import world

PAL = np.array(list(world.COLOURS.values()) + [[g] * 3 for g in world.GREYS], np.float32)
NAMES = list(world.COLOURS)


def region(obj, n_objects):
    m = np.zeros((world.SIZE, world.SIZE), bool)
    h = world.SIZE // 2
    if n_objects == 1:
        m[:] = True
    elif obj["position"] == "left":
        m[:, :h] = True
    elif obj["position"] == "right":
        m[:, h:] = True
    elif obj["position"] == "top":
        m[:h] = True
    else:
        m[h:] = True
    return m


def classify(img, obj, n_objects):
    x = img.reshape(-1, 3).astype(np.float32)
    d = ((x[:, None, :] - PAL[None]) ** 2).sum(-1)
    near = d.argmin(1).reshape(world.SIZE, world.SIZE)
    ok = (np.sqrt(d.min(1)) < 80).reshape(world.SIZE, world.SIZE)
    reg = region(obj, n_objects)
    cand = reg & ok & (near < len(NAMES))
    if cand.sum() < 4:
        return None
    counts = np.bincount(near[cand], minlength=len(NAMES))
    ci = int(counts.argmax())
    mask = cand & (near == ci)
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    ext = int(max(x1 - x0, y1 - y0))
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    pos = min(world.POSITIONS, key=lambda p: (world.POSITIONS[p][0] - cx) ** 2 + (world.POSITIONS[p][1] - cy) ** 2)
    best, best_iou = None, -1
    for s in world.SHAPES:
        t = world.shape_mask(s, int(x0), int(y0), ext)
        iou = (t & mask).sum() / max(1, (t | mask).sum())
        if iou > best_iou:
            best, best_iou = s, iou
    return {"colour": NAMES[ci], "shape": best, "size": "large" if ext >= 18 else "small", "position": pos}


def score(img, objects):
    res = {a: [0, 0] for a in ("colour", "shape", "size", "position")}
    for o in objects:
        p = classify(img, o, len(objects))
        for a in res:
            res[a][1] += 1
            res[a][0] += int(p is not None and p[a] == o[a])
    return res


if __name__ == "__main__":
    import json, os, sys
    from PIL import Image
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests", "world", "heldout")
    tot = {a: [0, 0] for a in ("colour", "shape", "size", "position")}
    for line in open(os.path.join(d, "labels.jsonl")):
        r = json.loads(line)
        for a, (c, n) in score(np.asarray(Image.open(os.path.join(d, r["file"])).convert("RGB")), r["objects"]).items():
            tot[a][0] += c
            tot[a][1] += n
    print({a: c / n for a, (c, n) in tot.items()})
