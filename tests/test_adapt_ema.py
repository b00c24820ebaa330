"""EMA: averaging arithmetic on parameters, BatchNorm buffers copied, state round trip."""

import torch
from torch import nn

from hqtd.adapt.ema import ModelEMA


def _model():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[0].bias.fill_(0.0)
    return model


def test_parameters_are_averaged_with_the_decay():
    student = _model()
    ema = ModelEMA(student, decay=0.9)
    with torch.no_grad():
        student[0].weight.copy_(torch.tensor([[11.0, 2.0], [-7.0, 4.0]]))
        student[0].bias.fill_(10.0)
    ema.update(student)
    # 0.9·old + 0.1·new: 0.9·1 + 0.1·11 = 2; 0.9·3 + 0.1·(−7) = 2; bias 0.9·0 + 0.1·10 = 1.
    expected = torch.tensor([[2.0, 2.0], [2.0, 4.0]])
    torch.testing.assert_close(ema.module[0].weight, expected)
    torch.testing.assert_close(ema.module[0].bias, torch.ones(2))
    ema.update(student)  # second step: 0.9·2 + 0.1·11 = 2.9
    torch.testing.assert_close(ema.module[0].weight[0, 0], torch.tensor(2.9))


def test_batchnorm_buffers_are_copied_not_averaged():
    student = _model()
    ema = ModelEMA(student, decay=0.999)
    student.train()
    student(torch.tensor([[1.0, 5.0], [3.0, -1.0], [8.0, 0.0]]))  # updates the running statistics
    ema.update(student)
    bn, ema_bn = student[1], ema.module[1]
    assert torch.equal(ema_bn.running_mean, bn.running_mean)
    assert torch.equal(ema_bn.running_var, bn.running_var)
    assert ema_bn.num_batches_tracked.item() == 1
    assert not torch.equal(bn.running_mean, torch.zeros(2))  # the copy is not trivially zero


def test_copy_is_frozen_in_eval_mode_and_independent():
    student = _model()
    ema = ModelEMA(student)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert ema.module[0].weight[0, 0].item() == 1.0  # deep copy, not shared storage


def test_state_dict_round_trip():
    student = _model()
    ema = ModelEMA(student, decay=0.5)
    with torch.no_grad():
        student[0].weight.mul_(3.0)
    ema.update(student)
    restored = ModelEMA(_model(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    assert set(ema.state_dict()) == set(student.state_dict())


def test_buffers_only_copied_when_asked_with_buffers_per_epoch():
    # METHOD.md §8.5: the authors copy BN buffers at epoch ends only; parameters average every step.
    student = _model()
    ema = ModelEMA(student, decay=0.5, buffers_every_step=False)
    student.train()
    student(torch.tensor([[1.0, 5.0], [3.0, -1.0], [8.0, 0.0]]))
    with torch.no_grad():
        student[0].bias.fill_(4.0)
    ema.update(student)
    ema_bn = ema.module[1]
    assert torch.equal(ema_bn.running_mean, torch.zeros(2))  # still the initial statistics
    assert torch.equal(ema_bn.running_var, torch.ones(2))
    assert ema_bn.num_batches_tracked.item() == 0
    torch.testing.assert_close(ema.module[0].bias, torch.full((2,), 2.0))  # 0.5·0 + 0.5·4
    ema.copy_buffers(student)
    assert torch.equal(ema_bn.running_mean, student[1].running_mean)
    assert torch.equal(ema_bn.running_var, student[1].running_var)
    assert ema_bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(ema.module[0].bias, torch.full((2,), 2.0))  # parameters untouched
