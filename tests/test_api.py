"""The public API documents itself: every option of TrainConfig is named in help(opzo.train) and
described in TrainConfig's own docstring."""
from dataclasses import fields

import opzo_ext as opzo


def test_train_and_trainconfig_document_every_option():
    for f in fields(opzo.TrainConfig):
        assert f"``{f.name}``" in opzo.train.__doc__, f"help(opzo.train) does not name {f.name}"
        assert f"\n        {f.name}:" in opzo.TrainConfig.__doc__ or f"{f.name}:" in opzo.TrainConfig.__doc__, f.name
