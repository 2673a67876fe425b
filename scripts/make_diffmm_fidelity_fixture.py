"""Make the DiffMM fidelity fixture (tests/data/diffmm_reference.json) by running the authors' own modules
(github HKUDS/DiffMM at fae20e6: Model, Denoise, GaussianDiffusion from Model.py, contrastLoss from Utils/Utils.py,
the graph normalisation of Main.py's Coach.buildUIMatrix) on the tiny generated dataset of
tests/data/mmrec_reference.py (6 users × 8 items, text and image features). Not run in CI; the authors' code is not
vendored (no licence): its checkout is given on the command line, imported unchanged; the fixture holds numbers.

    git clone https://github.com/HKUDS/DiffMM /tmp/DiffMM
    /work/refvenv/bin/python scripts/make_diffmm_fidelity_fixture.py /tmp/DiffMM

Two cases: the authors' defaults (trans 0: LeakyReLU(f W); cl_method 0: the modality views contrasted pairwise)
and their TikTok switches (trans 1: linear layers; cl_method 1: each view against the output). Per case, from the
seeded initial weights (recorded): (1) the diffusion losses of all six users' rows (image, then text; each drawing
its steps, noise and dropout mask after torch.manual_seed(7), replayed by the test) and the denoisers'
gradients; (2) the reverse process from the rows (``sampling_steps`` 0, no noise) and the rebuilt user-item graphs
(top-1 item per user, self-loops, D^-1/2 · D^-1/2; keepRate 1, so no edge is dropped); (3) on those graphs, the
training loss of one batch (BPR ÷ batch + reg + cl, as Main.trainEpoch sums it), every parameter's gradient,
and the full score matrix. Shims (scripts/run_diffmm_reference.py): ``.cuda()`` is the identity.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import DATA, ROOT, as_lists, load_module  # noqa: E402
from run_diffmm_reference import install_shims  # noqa: E402

OUT = DATA / "diffmm_reference.json"
DIM, TIME_DIM, HIDDEN = 6, 4, [5]
COMMON = {"gnn_layer": 2, "reg": 1e-3, "ssl_reg": 0.1, "temp": 0.5, "ris_lambda": 0.5, "ris_adj_lambda": 0.2,
          "e_loss": 0.1, "steps": 5, "noise_scale": 0.1, "noise_min": 0.0001, "noise_max": 0.02, "keepRate": 1.0,
          "batch": 4}
CASES = {"defaults": {"trans": 0, "cl_method": 0}, "tiktok": {"trans": 1, "cl_method": 1}}


def ui_matrix(users, items, n_users, n_items) -> torch.Tensor:
    """Main.py's Coach.buildUIMatrix (a method that uses nothing of the Coach but ``normalizeAdj``), run as such."""
    import Main

    coach = Main.Coach.__new__(Main.Coach)
    return coach.buildUIMatrix(np.array(users), np.array(items), np.ones(len(users)))


def run_case(settings: dict, tiny, train, features) -> dict:
    import Model
    from Params import args
    from Utils.Utils import contrastLoss, pairPredict

    for key, value in {**COMMON, **settings}.items():
        setattr(args, key, value)
    args.user, args.item, args.latdim, args.d_emb_size = tiny.N_USERS, tiny.N_ITEMS, DIM, TIME_DIM
    args.image_feat_dim, args.text_feat_dim = features["image"].shape[1], features["text"].shape[1]
    users = np.array([u for u, _ in train])
    items = np.array([i for _, i in train])
    rows = torch.tensor(sp.coo_matrix((np.ones(len(users)), (users, items)), shape=(args.user, args.item)).toarray(),
                        dtype=torch.float32)
    adj = ui_matrix(users, items, args.user, args.item)

    torch.manual_seed(0)
    model = Model.Model(torch.tensor(features["image"]), torch.tensor(features["text"]))
    diffusion = Model.GaussianDiffusion(args.noise_scale, args.noise_min, args.noise_max, args.steps)
    dims = HIDDEN + [args.item]
    denoisers = {m: Model.Denoise(dims[::-1], dims, args.d_emb_size, norm=False) for m in ("image", "text")}
    weights = {"model": as_lists(model.state_dict()),
               **{m: as_lists(d.state_dict()) for m, d in denoisers.items()}}

    # (1) diffusion losses and the denoisers' gradients (Main.trainEpoch's first loop, one batch of all users)
    item_ids = model.getItemEmbeds().detach()
    feats = {"image": model.getImageFeats().detach(), "text": model.getTextFeats().detach()}
    torch.manual_seed(7)
    diffusion_losses = {}
    total = 0
    for m in ("image", "text"):
        diff, gc = diffusion.training_losses(denoisers[m], rows, item_ids, torch.arange(args.user), feats[m])
        diffusion_losses[m] = diff.mean() + gc.mean() * args.e_loss
        total = total + diffusion_losses[m]
    total.backward()
    denoiser_grads = {m: as_lists({k: p.grad for k, p in d.named_parameters()}) for m, d in denoisers.items()}

    # (2) reverse process and the rebuilt graphs (Main.trainEpoch's second loop)
    denoised, graphs, dense_graphs = {}, {}, {}
    with torch.no_grad():
        for m in ("image", "text"):
            denoised[m] = diffusion.p_sample(denoisers[m], rows, 0, False)
            top = torch.topk(denoised[m], k=1).indices.reshape(-1)
            graphs[m] = model.edgeDropper(ui_matrix(np.arange(args.user), top.numpy(), args.user, args.item))
            dense_graphs[m] = graphs[m].to_dense()

    # (3) one BPR batch on those graphs (Main.trainEpoch's third loop)
    ancs, poss, negs = torch.tensor([0, 2, 3, 5]), None, torch.tensor([7, 0, 1, 4])
    poss = torch.tensor([int(items[users == u][0]) for u in ancs])
    usr, itm = model.forward_MM(adj, graphs["image"], graphs["text"])
    bpr = -(pairPredict(usr[ancs], itm[poss], itm[negs])).sigmoid().log().sum() / args.batch
    loss = bpr + model.reg_loss() * args.reg
    u1, i1, u2, i2 = model.forward_cl_MM(adj, graphs["image"], graphs["text"])
    if args.cl_method == 1:
        cl = sum((contrastLoss(usr, uv, ancs, args.temp) + contrastLoss(itm, iv, poss, args.temp)) * args.ssl_reg
                 for uv, iv in ((u1, i1), (u2, i2)))
    else:
        cl = (contrastLoss(u1, u2, ancs, args.temp) + contrastLoss(i1, i2, poss, args.temp)) * args.ssl_reg
    loss = loss + cl
    loss.backward()
    with torch.no_grad():
        usr, itm = model.forward_MM(adj, graphs["image"], graphs["text"])
    return {
        "settings": settings, "weights": weights,
        "diffusion_losses": {m: v.item() for m, v in diffusion_losses.items()}, "denoiser_grads": denoiser_grads,
        "denoised": as_lists(denoised), "graphs": as_lists(dense_graphs),
        "batch": {"users": ancs.tolist(), "pos": poss.tolist(), "neg": negs.tolist()},
        "loss": loss.item(), "grads": as_lists({k: p.grad for k, p in model.named_parameters()}),
        "scores": (usr @ itm.T).double().tolist(),
    }


def main(src: str) -> None:
    install_shims()
    sys.argv = sys.argv[:1]  # the authors' Params.py parses the command line on import
    sys.path.insert(0, str(Path(src).resolve()))
    tiny = load_module("mmrec_reference", ROOT / "tests" / "data" / "mmrec_reference.py")
    train, held, features = tiny.tiny_data()
    cases = {name: run_case(settings, tiny, train, features) for name, settings in CASES.items()}
    fixture = {
        "train": [[int(u), int(i)] for u, i in train], "held_out": held,
        "features": {m: f.tolist() for m, f in features.items()},
        "common": COMMON, "dims": {"embedding": DIM, "time": TIME_DIM, "hidden": HIDDEN}, "cases": cases,
    }
    OUT.write_text(json.dumps(fixture))
    print("wrote", OUT, {name: case["loss"] for name, case in cases.items()})


if __name__ == "__main__":
    main(sys.argv[1])
