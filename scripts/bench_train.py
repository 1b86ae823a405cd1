"""Training and inference speed of every model against an equivalent PyTorch implementation.

python scripts/bench_train.py [--models=stn,cnn_shallow] [--batch_size=128] [--rounds=5] [--steps=10]
                              [--dtype=float32|bfloat16] [--malloc=keep|default]

Same architecture, batch size, optimizer (Adam), loss (cross-entropy + L2 on kernels), flip
augmentation inside the step and computation dtype on both sides. Where PyTorch sees a GPU, both
sides run on it, PyTorch with TF32 allowed as XLA allows it by default. JAX and PyTorch run alternately in one
process, warm-up excluded; medians over rounds are reported with the ratio JAX / PyTorch.
Both frameworks share the process's host allocator: by default it keeps freed memory for reuse, as
ferjax's scripts set it (`ferjax.host_memory`); --malloc=default measures glibc's own behaviour.
Also measured: the host input pipeline (batching from the cached arrays) against the fastest
train step, the XLA temporary memory of each JAX train step and the peak resident memory.
Needs `pip install -e '.[bench]'`.
"""

import argparse
import functools
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax import configs, data, features, host_memory, models, train  # noqa: E402

HOG_DIM = features.hog_dim(48, 9, 8, 2)


# ----------------------------------------------------------------------------- PyTorch twins


def torch_model(name: str):
    """The PyTorch equivalent of a registered ferjax model (same layers, same parameter count)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    ours = models.create(name)

    class ConvStack(nn.Module):
        def __init__(self, widths, convs_per_stage):
            super().__init__()
            layers, cin = [], 1
            for width in widths:
                for _ in range(convs_per_stage):
                    layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, momentum=0.1),
                               nn.ReLU()]
                    cin = width
                layers.append(nn.MaxPool2d(2))
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return self.body(x).flatten(1)

    class Head(nn.Module):
        def __init__(self, features, hidden, dropout):
            super().__init__()
            layers = []
            for h in hidden:
                layers += [nn.Dropout(dropout), nn.Linear(features, h, bias=False), nn.BatchNorm1d(h), nn.ReLU()]
                features = h
            layers += [nn.Dropout(dropout), nn.Linear(features, 7)]
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return self.body(x)

    class Localization(nn.Module):
        def __init__(self, normalize=False):
            super().__init__()

            def conv_stage(cin, cout, kernel):
                if normalize:
                    return [nn.Conv2d(cin, cout, kernel, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
                return [nn.Conv2d(cin, cout, kernel), nn.MaxPool2d(2), nn.ReLU()]

            self.convs = nn.Sequential(*conv_stage(1, 8, 7), *conv_stage(8, 10, 5))
            fc1 = [nn.Linear(640, 32, bias=False), nn.BatchNorm1d(32)] if normalize else [nn.Linear(640, 32)]
            self.fc = nn.Sequential(*fc1, nn.ReLU(), nn.Linear(32, 6))
            nn.init.zeros_(self.fc[-1].weight)
            self.fc[-1].bias.data.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

        def forward(self, x):
            theta = self.fc(self.convs(x).flatten(1)).view(-1, 2, 3)
            return F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)

    def vgg_parts():
        widths, convs, hidden = ours.widths, ours.convs_per_stage, ours.hidden
        features = (48 // 2 ** len(widths)) ** 2 * widths[-1]
        return ConvStack(widths, convs), features, hidden

    class CNN(nn.Module):
        def __init__(self, stn=False):
            super().__init__()
            self.stn = Localization(normalize=True) if stn else None
            self.convs, features, hidden = vgg_parts()
            self.head = Head(features, hidden, 0.5)

        def forward(self, x, hog=None):
            if self.stn is not None:
                x = self.stn(x)
            return self.head(self.convs(x))

    class HOGFusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs, features, hidden = vgg_parts()
            self.hog_bn = nn.BatchNorm1d(HOG_DIM)
            self.head = Head(features + HOG_DIM, hidden, 0.5)

        def forward(self, x, hog=None):
            return self.head(torch.cat([self.convs(x), self.hog_bn(hog)], 1))

    class DeepEmotion(nn.Module):
        def __init__(self):
            super().__init__()
            self.stn = Localization()
            self.conv1, self.conv2 = nn.Conv2d(1, 10, 3), nn.Conv2d(10, 10, 3)
            self.conv3, self.conv4 = nn.Conv2d(10, 10, 3), nn.Conv2d(10, 10, 3)
            self.bn = nn.BatchNorm2d(10)
            self.fc1, self.fc2 = nn.Linear(810, 50), nn.Linear(50, 7)
            self.dropout = nn.Dropout(0.5)

        def forward(self, x, hog=None):
            x = self.stn(x)
            x = F.relu(F.max_pool2d(self.conv2(F.relu(self.conv1(x))), 2))
            x = F.relu(F.max_pool2d(self.bn(self.conv4(F.relu(self.conv3(x)))), 2))
            return self.fc2(F.relu(self.fc1(self.dropout(x.flatten(1)))))

    if name == "stn":
        return DeepEmotion()
    if name == "hog":
        return HOGFusion()
    return CNN(stn=name.startswith("stn"))


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_steps(name: str, batch_size: int, l2: float, dtype: str):
    import torch

    device = torch_device()
    model = torch_model(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    kernels = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    mean = torch.rand(48, 48, device=device)
    images = torch.randint(0, 256, (batch_size, 48, 48), device=device).float()
    labels = torch.randint(0, 7, (batch_size,), device=device)
    hog = torch.rand(batch_size, HOG_DIM, device=device)
    # Mixed precision as in ferjax: bfloat16 computation, float32 parameters.
    autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16")

    def train_step():
        model.train()
        flip = torch.rand(batch_size, device=device) < 0.5
        x = torch.where(flip[:, None, None], images.flip(-1), images) / 255.0 - mean
        with autocast:
            logits = model(x[:, None], hog).float()
        loss = torch.nn.functional.cross_entropy(logits, labels) + l2 * 0.5 * sum((k * k).sum() for k in kernels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    @torch.no_grad()
    def infer():
        model.eval()
        with autocast:
            return model((images / 255.0 - mean)[:, None], hog)

    n_params = sum(p.numel() for p in model.parameters())
    return train_step, infer, n_params


# ----------------------------------------------------------------------------- JAX


def jax_steps(name: str, batch_size: int, dtype: str = "float32"):
    config = configs.get_config(name, batch_size=batch_size, dtype=dtype)
    model = models.create(name, **config.model_kwargs())
    rng = np.random.default_rng(0)
    mean = rng.random((48, 48)).astype(np.float32)
    state = train.create_train_state(jax.random.key(0), model, config, mean_image=mean, steps_per_epoch=100,
                                     hog_dim=HOG_DIM)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size, 48, 48)), jnp.uint8),
             "label": jnp.asarray(rng.integers(0, 7, batch_size), jnp.int32),
             "mask": jnp.ones(batch_size, jnp.float32)}
    if model.needs_hog:
        batch["hog"] = batch["hog_flipped"] = jnp.asarray(rng.random((batch_size, HOG_DIM)), jnp.float32)
    step = jax.jit(functools.partial(train.train_step, config=config), donate_argnums=0)
    predict = jax.jit(train.predict_logits)
    memory = step.lower(state, batch, jax.random.key(0)).compile().memory_analysis()
    holder = {"state": state, "i": 0}

    def train_step():
        holder["state"], metrics = step(holder["state"], batch, jax.random.key(holder["i"]))
        holder["i"] += 1
        return metrics["loss"]

    def infer():
        return predict(holder["state"], batch)

    temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 1e6 if memory is not None else float("nan")
    return train_step, infer, models.count_params(state.params), temp_mb


def throughput(fn, block, steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    block(out)
    return steps * batch_size / (time.perf_counter() - start)


def input_pipeline_rate(batch_size: int, seconds: float = 3.0) -> float:
    """Images/s of the host side: shuffled batches (with padding and mask) from the cached arrays."""
    try:
        split = data.load().train
    except data.DataError:
        rng = np.random.default_rng(0)
        split = data.Split(rng.integers(0, 256, (28709, 48, 48), dtype=np.uint8), rng.integers(0, 7, 28709),
                           np.array(["synthetic"] * 28709))
    count, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for batch in data.batches(split, batch_size, shuffle_seed=epoch):
            jax.device_put(batch)
            count += batch_size
        epoch += 1
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="stn,cnn_shallow,cnn_medium,cnn_deep,hog,stn_deep")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="computation dtype on both sides (parameters stay float32)")
    parser.add_argument("--malloc", default="keep", choices=("keep", "default"),
                        help="keep: glibc keeps freed memory for reuse (ferjax.host_memory); default: glibc as it is")
    args = parser.parse_args()
    kept = args.malloc == "keep" and host_memory.keep_freed_memory()  # before JAX or PyTorch start their threads
    unknown = [name for name in args.models.split(",") if name not in models.names()]
    if unknown:
        parser.error(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(models.names())}")
    for flag in ("batch_size", "rounds", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}={getattr(args, flag)}: must be at least 1")
    try:
        import torch
    except ImportError:
        parser.error("PyTorch is not installed: pip install -e '.[bench]'")

    torch.manual_seed(0)
    device = torch_device()
    if device == "cuda":
        # XLA's default float32 convolutions and matmuls on GPU use TF32; let PyTorch do the same.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"{machine}; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} ({device}, "
          f"{torch.get_num_threads()} threads); batch {args.batch_size}, {args.dtype}, Adam, "
          f"median of {args.rounds} rounds x {args.steps} steps; host malloc "
          f"{'keeps freed memory' if kept else 'as glibc sets it'}")
    print("| model | params | JAX train img/s | PyTorch train img/s | ratio | JAX infer img/s | PyTorch infer img/s "
          "| ratio | JAX step temp MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fastest_train = 0.0
    for name in args.models.split(","):
        jax_train, jax_infer, params, temp_mb = jax_steps(name, args.batch_size, args.dtype)
        pt_train, pt_infer, pt_params = torch_steps(name, args.batch_size, l2=1e-4, dtype=args.dtype)
        assert params == pt_params, f"{name}: JAX {params} vs PyTorch {pt_params} parameters"
        block_jax = jax.block_until_ready
        block_pt = (lambda x: torch.cuda.synchronize()) if device == "cuda" else (lambda x: x)
        for fn, block in ((jax_train, block_jax), (jax_infer, block_jax), (pt_train, block_pt), (pt_infer, block_pt)):
            throughput(fn, block, 2, args.batch_size)  # warm-up and compilation
        rates = {k: [] for k in ("jt", "pt", "ji", "pi")}
        for _ in range(args.rounds):  # alternate, so that machine noise hits both alike
            rates["jt"].append(throughput(jax_train, block_jax, args.steps, args.batch_size))
            rates["pt"].append(throughput(pt_train, block_pt, args.steps, args.batch_size))
            rates["ji"].append(throughput(jax_infer, block_jax, args.steps, args.batch_size))
            rates["pi"].append(throughput(pt_infer, block_pt, args.steps, args.batch_size))
        med = {k: statistics.median(v) for k, v in rates.items()}
        fastest_train = max(fastest_train, med["jt"])
        print(f"| `{name}` | {params:,} | {med['jt']:.0f} | {med['pt']:.0f} | {med['jt'] / med['pt']:.2f} | "
              f"{med['ji']:.0f} | {med['pi']:.0f} | {med['ji'] / med['pi']:.2f} | {temp_mb:.1f} |", flush=True)
    pipeline = input_pipeline_rate(args.batch_size)
    print(f"\ninput pipeline: {pipeline:.0f} img/s = {pipeline / fastest_train:.1f}x the fastest JAX train step "
          f"({fastest_train:.0f} img/s)")
    print(f"peak resident memory of this process (JAX and PyTorch, all models): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
