"""Write tests/data/mmrec_fidelity/slmrec.pt: the outputs of MMRec's own SLMRec class on the tiny dataset
of tests/data/mmrec_fidelity (made by scripts/make_mmrec_fidelity_fixture.py), for each self-supervised task.

    python scripts/make_slmrec_fidelity_fixture.py /path/to/MMRec/src

MMRec (GPL) is imported from the path given, never copied: the fixture holds only numbers. Not run in CI;
tests/test_slmrec.py loads the fixture into recbole_mm's SLMRec and compares.

Cases (per case: config, initial weights, two batches of (user, positive), the loss and every gradient on
each batch with no optimiser step between them, full-ranking scores):
- ``FAC``: two modalities (image in MMRec's vision slot, text in its text slot), the default task.
- ``FAC_1``, ``FD``, ``FM``, ``FD+FM``: one modality (image). MMRec's FD and FM paths read an audio view
  that MMRec never builds unless its dataset is named ``kwai``, so they run in that one-modality branch.
The random parts are recorded so that the test can replay them: every dropout mask (which entries
nn.Dropout kept, in call order) and FM's two masked views (``np.random.randint`` draws: 0 = vision,
1 = audio, absent here, so nothing is masked; 3 = ID, never drawn in the one-modality branch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import FakeDataset, draw_batches, feature_folder, mmrec_config, record_steps  # noqa: E402
from make_mmrec_fidelity_fixture import OUT  # noqa: E402

COMMON = {"embedding_size": 8, "n_layers": 2, "ssl_alpha": 0.5, "ssl_temp": 0.5, "temp": 0.2,
          "dropout_rate": 0.3, "mm_fusion_mode": "concat", "train_batch_size": 8}
CASES = {"FAC": 2, "FAC_1": 1, "FD": 1, "FM": 1, "FD+FM": 1}  # case: number of modalities


class RecordingDropout(torch.nn.Dropout):
    """nn.Dropout that keeps which entries it kept, in call order."""

    def __init__(self, p: float):
        super().__init__(p)
        self.masks = []

    def forward(self, x):
        out = super().forward(x)
        self.masks.append((out != 0).detach().clone())
        return out


def main(mmrec_src: str) -> None:
    sys.path.insert(0, mmrec_src)
    sys.modules.setdefault("torch_scatter", type(sys)("torch_scatter"))  # imported, never used by SLMRec
    sys.modules["torch_scatter"].scatter = None
    from models.slmrec import SLMRec

    inter = pd.read_csv(OUT / "mmrec_fidelity.inter", sep="\t")
    n_users, n_items = inter.userID.max() + 1, inter.itemID.max() + 1
    train = inter[inter["x_label"] == 0].sort_values(["userID", "itemID"])
    batches = draw_batches(train, n_items, COMMON["train_batch_size"], seed=11, negatives=False)
    features = {m: np.load(OUT / f"{m}_feat.npy") for m in ("image", "text")}
    records = {}
    for case, n_modalities in CASES.items():
        task = case.split("_")[0]
        ours = {**COMMON, "ssl_task": task}
        if n_modalities == 1:
            ours["modalities"] = {"image": "image_feat.npy"}
        folder = "tiny" if n_modalities == 2 else "kwai"  # MMRec's one-modality branch is named kwai
        with feature_folder(features, dataset=folder) as tmp:
            config = mmrec_config(
                tmp, dataset=folder, **{"data.input.dataset": folder},
                text_feature_file="text_feat.npy" if n_modalities == 2 else "absent.npy",
                recdim=COMMON["embedding_size"], layer_num=COMMON["n_layers"], ssl_task=task,
                ssl_alpha=COMMON["ssl_alpha"], ssl_temp=COMMON["ssl_temp"], temp=COMMON["temp"],
                dropout_rate=COMMON["dropout_rate"], mm_fusion_mode="concat", init="xavier", adj_type="pre",
                train_batch_size=COMMON["train_batch_size"])
            torch.manual_seed(0)
            model = SLMRec(config, FakeDataset(train, n_users, n_items))
        if task in ("FD", "FD+FM"):
            model.dropout = RecordingDropout(COMMON["dropout_rate"])
        draws = []
        randint = np.random.randint

        def recorded_randint(*args, **kwargs):
            draws.append(int(randint(*args, **kwargs)))
            return draws[-1]

        np.random.randint = recorded_randint
        record = {"config": ours, "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                  "batches": batches}
        np.random.seed(3)
        torch.manual_seed(1)
        model.train()
        record_steps(model, batches, record)
        np.random.randint = randint
        record["draws"] = torch.tensor(draws, dtype=torch.long)
        if task in ("FD", "FD+FM"):
            record["dropout_masks"] = torch.stack(model.dropout.masks)
        model.eval()
        with torch.no_grad():
            model.getEmbedding(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), None)
            record["scores"] = model.full_sort_predict(torch.arange(n_users).unsqueeze(0))
        records[case] = record
        print(case, {k: round(float(v), 6) for k, v in record.items() if k.startswith("loss")}, "draws", draws)
    torch.save(records, OUT / "slmrec.pt")


if __name__ == "__main__":
    main(sys.argv[1])
