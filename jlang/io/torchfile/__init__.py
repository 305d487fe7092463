"""Read and write `torch.save` files with NumPy alone: no torch, and no pickle code execution.

Why: the published artefacts of the language-neuron literature are `torch.save`
files -- the LAPE masks (`List[List[LongTensor]]`, RUCAIBox/Language-Specific-Neurons
`*.neuron.pth`), the activation statistics (`{"n", "over_zero"}` or
`{"total_tokens", "over_zero"}`, NJUNLP/Language-Neurons-Alignment), and so on.
jlang's core must read and write them without depending on torch, and a file
from the internet must never run code when it is opened.

Format (torch >= 1.6, "zip" serialization; see `torch/serialization.py`)::

    <archive>/data.pkl          pickle (protocol 2) of the object; every tensor is
                                REDUCE(torch._utils._rebuild_tensor_v2,
                                       (storage, offset, size, stride, requires_grad, hooks))
                                and every storage a persistent id
                                ('storage', torch.<T>Storage, key, location, numel)
    <archive>/data/<key>        raw little-endian bytes of storage <key>
    <archive>/byteorder         "little" | "big" (absent in old files: little)
    <archive>/version           "3\\n"

The legacy (torch < 1.6) format is a concatenation of pickles -- magic number,
protocol version, sys info, the object, the list of storage keys -- followed by
each storage as an int64 element count and its raw bytes.

Reading uses a `pickle.Unpickler` whose `find_class` returns only the handful of
harmless callables a tensor file needs (mapped to NumPy stand-ins) and raises
`TorchFileError` for anything else, before it is looked up, so a pickle that
reduces to `os.system` fails without running anything.

Writing emits the pickle opcodes directly (protocol 2, persistent ids, the
globals torch itself writes), so `torch.load(path, weights_only=True)` reads the
file and jlang never imports torch.
"""

from jlang.io.torchfile.formats import TorchFileError
from jlang.io.torchfile.read import load
from jlang.io.torchfile.write import save, save_tensor_lists

__all__ = ["TorchFileError", "load", "save", "save_tensor_lists"]
