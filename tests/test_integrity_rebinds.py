"""torch re-binds ``torch.manual_seed`` when ``torch._dynamo`` is first imported (torch.optim does it
lazily on the first step). The plugin guard must not call that a vandal method, and must still catch
a real replacement of the same function."""

import subprocess
import sys

SCRIPT = r"""
import sys
import torch
from xplain.run import integrity

assert "torch._dynamo" not in sys.modules, "the test needs a process without torch._dynamo"
saved = integrity.torch_functions()
p = torch.nn.Parameter(torch.ones(2))
opt = torch.optim.Adam([p], lr=0.1)
p.sum().backward()
opt.step()  # imports torch._dynamo, which wraps torch.manual_seed
assert "torch._dynamo" in sys.modules
assert torch.manual_seed is not saved[("torch", "manual_seed")]
assert integrity.changed_torch_functions(saved) == [], integrity.changed_torch_functions(saved)
original = torch.manual_seed
torch.manual_seed = lambda seed: original(0)  # a vandal: every seed becomes 0
assert integrity.changed_torch_functions(saved) == ["torch.manual_seed"]
integrity.restore_torch_functions(saved)
assert integrity.changed_torch_functions(saved) == []
print("ok")
"""


def test_dynamo_rebinding_of_manual_seed_is_not_a_change_but_a_replacement_is():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
