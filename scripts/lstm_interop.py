#!/usr/bin/env python3
"""PyTorch interop for shadowbucket's LSTM model files (safetensors).

Needs numpy and the `safetensors` package; uses torch too when it is importable.

  lstm_interop.py forward MODEL CASE OUT
      Loads MODEL (written by Rust's LstmModel::save), runs the inputs of CASE through it and
      writes OUT with the head outputs `y` [T, head_dim] and final states `h`, `c`
      [layers, hidden]. CASE holds `x` [T, input_dim] raw (un-normalized) features and the
      initial states `h0`, `c0` [layers, hidden]. The math is PyTorch's documented nn.LSTM
      (numpy, float64); with torch, nn.LSTM + nn.Linear loaded with load_state_dict run the
      same inputs and must agree within 1e-5. When CASE also holds `s` [T] (the customer's
      scale at each step), OUT gets the decoded `forecast` [T, 4 * horizons] (mean, p50, p90,
      p99 per horizon, tokens) and `scenario` [T, 4], decoded as Rust's `model::decode` does
      (the residual head, `decode_numpy` below).

  lstm_interop.py write MODEL CASE [--hidden H] [--layers L] [--horizons 1,3] [--feeds a,b]
                        [--seed S] [--steps T]
      Writes a random model from Python (torch's initialization when torch is present) in the
      shadowbucket format, and CASE with random `x`, `h0`, `c0` and the expected outputs `y`,
      `h`, `c` computed here, for Rust to check.

The format (tensor names, shapes, metadata) is documented in core/src/model/io.rs.
"""

import argparse
import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

BASE_FEATURES = [
    "usage", "requests", "fallback_share", "denied_share", "deviation", "event_customer",
    "scale", "tod_sin", "tod_cos", "dow_sin", "dow_cos", "event_global",
]
HEAD_PER_HORIZON = 4
SCENARIOS = ["low", "medium", "high", "spike"]
TOLERANCE = 1e-5
FORMAT_VERSION = "2"
HEAD = "residual-v1"

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def parse_floats(text):
    text = text.strip()
    if text.startswith("["):
        return [float(v) for v in json.loads(text)]
    return [float(v) for v in text.split(",") if v.strip()]


def split_list(text):
    text = text.strip()
    return [v.strip() for v in text.split(",")] if text else []


def load_model(path):
    """(metadata, float64 tensors) of a model file, checked like the Rust loader does."""
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "shadowbucket-lstm" or meta.get("format_version") != FORMAT_VERSION:
        sys.exit(f"{path}: not a shadowbucket-lstm version {FORMAT_VERSION} file: "
                 f"{meta.get('format')!r} version {meta.get('format_version')!r}")
    if meta.get("head") != HEAD:
        sys.exit(f"{path}: unknown head {meta.get('head')!r} (expected {HEAD!r})")
    tensors = {k: v.astype(np.float64) for k, v in load_file(path).items()}
    hidden, layers = int(meta["hidden"]), int(meta["layers"])
    feeds = split_list(meta["feeds"])
    features = BASE_FEATURES + [f"feed:{f}" for f in feeds]
    if split_list(meta["features"]) != features:
        sys.exit(f"{path}: feature list mismatch: {meta['features']}")
    mean = np.array(parse_floats(meta["feature_mean"]))
    std = np.array(parse_floats(meta["feature_std"]))
    head_dim = HEAD_PER_HORIZON * len(split_list(meta["horizons"])) + len(SCENARIOS)
    for k in range(layers):
        inp = len(features) if k == 0 else hidden
        assert tensors[f"weight_ih_l{k}"].shape == (4 * hidden, inp)
        assert tensors[f"weight_hh_l{k}"].shape == (4 * hidden, hidden)
    assert tensors["head.weight"].shape == (head_dim, hidden)
    return dict(meta=meta, t=tensors, hidden=hidden, layers=layers, mean=mean, std=std,
                head_dim=head_dim, input_dim=len(features))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def forward_numpy(m, x, h0, c0):
    """PyTorch's nn.LSTM equations (gate order i, f, g, o), then the linear head."""
    t, hd = m["t"], m["hidden"]
    h, c = h0.astype(np.float64).copy(), c0.astype(np.float64).copy()
    ys = []
    for row in x.astype(np.float64):
        inp = (row - m["mean"]) / m["std"]
        for k in range(m["layers"]):
            z = (t[f"weight_ih_l{k}"] @ inp + t[f"bias_ih_l{k}"]
                 + t[f"weight_hh_l{k}"] @ h[k] + t[f"bias_hh_l{k}"])
            i, f, g, o = (sigmoid(z[:hd]), sigmoid(z[hd:2 * hd]), np.tanh(z[2 * hd:3 * hd]),
                          sigmoid(z[3 * hd:]))
            c[k] = f * c[k] + i * g
            h[k] = o * np.tanh(c[k])
            inp = h[k]
        ys.append(t["head.weight"] @ inp + t["head.bias"])
    return np.array(ys), h, c


def softplus(v):
    return np.logaddexp(0.0, v)


def decode_numpy(y, s, usage_z):
    """The residual head (core/src/model/mod.rs): per horizon j, with the step's raw usage
    feature x_u = ln(1 + u_t/s), z_mean = x_u + y[4j], z50 = x_u + y[4j+1],
    z90 = z50 + softplus(y[4j+2]), z99 = z90 + softplus(y[4j+3]), each s * expm1(max(z, 0));
    the last four outputs are the scenario logits (softmax). Returns (forecast, scenario)."""
    y = np.asarray(y, dtype=np.float64)
    nh = (len(y) - len(SCENARIOS)) // HEAD_PER_HORIZON
    forecast = []
    for j in range(nh):
        y0, y1, y2, y3 = y[HEAD_PER_HORIZON * j:HEAD_PER_HORIZON * (j + 1)]
        z50 = usage_z + y1
        z90 = z50 + softplus(y2)
        z99 = z90 + softplus(y3)
        forecast += [s * np.expm1(max(z, 0.0)) for z in (usage_z + y0, z50, z90, z99)]
    logits = y[nh * HEAD_PER_HORIZON:]
    e = np.exp(logits - logits.max())
    return np.array(forecast), e / e.sum()


def torch_modules(m):
    import torch

    lstm = torch.nn.LSTM(m["input_dim"], m["hidden"], num_layers=m["layers"],
                         dtype=torch.float64)
    head = torch.nn.Linear(m["hidden"], m["head_dim"], dtype=torch.float64)
    lstm_state = {k: torch.from_numpy(v) for k, v in m["t"].items() if not k.startswith("head.")}
    lstm.load_state_dict(lstm_state, strict=True)
    head.load_state_dict({"weight": torch.from_numpy(m["t"]["head.weight"]),
                          "bias": torch.from_numpy(m["t"]["head.bias"])}, strict=True)
    return lstm, head


def forward_torch(m, x, h0, c0):
    import torch

    lstm, head = torch_modules(m)
    with torch.no_grad():
        inp = (torch.from_numpy(x.astype(np.float64)) - torch.from_numpy(m["mean"])) \
            / torch.from_numpy(m["std"])
        out, (h, c) = lstm(inp.unsqueeze(1), (torch.from_numpy(h0.astype(np.float64)).unsqueeze(1),
                                              torch.from_numpy(c0.astype(np.float64)).unsqueeze(1)))
        y = head(out[:, 0, :])
    return y.numpy(), h[:, 0, :].numpy(), c[:, 0, :].numpy()


def cmd_forward(args):
    m = load_model(args.model)
    case = load_file(args.case)
    y, h, c = forward_numpy(m, case["x"], case["h0"], case["c0"])
    out = {"y": y.astype(np.float32), "h": h.astype(np.float32), "c": c.astype(np.float32)}
    if HAVE_TORCH:
        yt, ht, ct = forward_torch(m, case["x"], case["h0"], case["c0"])
        worst = max(np.abs(yt - y).max(), np.abs(ht - h).max(), np.abs(ct - c).max())
        if worst > TOLERANCE:
            sys.exit(f"torch and numpy disagree by {worst}")
        out["y_torch"] = yt.astype(np.float32)
    if "s" in case:
        dec = [decode_numpy(yt_, s, row[0]) for yt_, s, row in
               zip(y, case["s"].astype(np.float64), case["x"].astype(np.float64))]
        out["forecast"] = np.array([f for f, _ in dec], dtype=np.float32)
        out["scenario"] = np.array([p for _, p in dec], dtype=np.float32)
    save_file(out, args.out)
    print(f"forward: {len(y)} steps, torch {'checked' if HAVE_TORCH else 'not installed'}")


def cmd_write(args):
    rng = np.random.default_rng(args.seed)
    horizons = [int(v) for v in split_list(args.horizons)]
    feeds = split_list(args.feeds)
    features = BASE_FEATURES + [f"feed:{f}" for f in feeds]
    n, hd, layers = len(features), args.hidden, args.layers
    head_dim = HEAD_PER_HORIZON * len(horizons) + len(SCENARIOS)
    if HAVE_TORCH:
        import torch

        torch.manual_seed(args.seed)
        lstm = torch.nn.LSTM(n, hd, num_layers=layers)
        head = torch.nn.Linear(hd, head_dim)
        tensors = {k: v.detach().numpy().astype(np.float32) for k, v in lstm.state_dict().items()}
        tensors.update({f"head.{k}": v.detach().numpy().astype(np.float32)
                        for k, v in head.state_dict().items()})
    else:
        bound = 1.0 / np.sqrt(hd)
        u = lambda *shape: rng.uniform(-bound, bound, shape).astype(np.float32)  # noqa: E731
        tensors = {}
        for k in range(layers):
            tensors[f"weight_ih_l{k}"] = u(4 * hd, n if k == 0 else hd)
            tensors[f"weight_hh_l{k}"] = u(4 * hd, hd)
            tensors[f"bias_ih_l{k}"] = u(4 * hd)
            tensors[f"bias_hh_l{k}"] = u(4 * hd)
        tensors["head.weight"] = u(head_dim, hd)
        tensors["head.bias"] = u(head_dim)
    mean = rng.uniform(-1, 1, n).astype(np.float32)
    std = rng.uniform(0.5, 2, n).astype(np.float32)
    meta = {
        "format": "shadowbucket-lstm",
        "format_version": FORMAT_VERSION,
        "head": HEAD,
        "hidden": str(hd),
        "layers": str(layers),
        "horizons": ",".join(map(str, horizons)),
        "feeds": ",".join(feeds),
        "features": ",".join(features),
        "feature_mean": json.dumps([float(v) for v in mean]),
        "feature_std": ",".join(repr(float(v)) for v in std),
        "scale_half_life": "144",
        "quantiles": "0.5,0.9,0.99",
        "scenario_edges": "0.5,1.5,3",
    }
    save_file(tensors, args.model, metadata=meta)
    m = load_model(args.model)
    x = rng.uniform(-3, 3, (args.steps, n)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (layers, hd)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (layers, hd)).astype(np.float32)
    y, h, c = forward_numpy(m, x, h0, c0)
    if HAVE_TORCH:
        yt, _, _ = forward_torch(m, x, h0, c0)
        assert np.abs(yt - y).max() <= TOLERANCE
    save_file({"x": x, "h0": h0, "c0": c0, "y": y.astype(np.float32),
               "h": h.astype(np.float32), "c": c.astype(np.float32)}, args.case)
    print(f"write: model {hd}x{layers}, {args.steps} steps, "
          f"torch {'used' if HAVE_TORCH else 'not installed'}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("model")
    f.add_argument("case")
    f.add_argument("out")
    w = sub.add_parser("write")
    w.add_argument("model")
    w.add_argument("case")
    w.add_argument("--hidden", type=int, default=6)
    w.add_argument("--layers", type=int, default=2)
    w.add_argument("--horizons", default="1,3")
    w.add_argument("--feeds", default="")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    {"forward": cmd_forward, "write": cmd_write}[args.cmd](args)


if __name__ == "__main__":
    main()
