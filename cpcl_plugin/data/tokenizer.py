"""Caption tokenizer: open_clip's tokenizer for the configured architecture."""
import open_clip

__all__ = ["CaptionTokenizer", "build_tokenizer"]


class CaptionTokenizer:
    """Turns one caption into a 1-D LongTensor of MODEL.CLIP.CONTEXT_LENGTH token ids.

    Captions longer than the context are truncated keeping the end-of-text token last (open_clip's
    behaviour), so the text encoder's EOT pooling still reads a real EOT position.
    """

    def __init__(self, arch, context_length):
        self.context_length = int(context_length)
        self._tokenizer = open_clip.get_tokenizer(arch, context_length=self.context_length)

    def __call__(self, caption):
        return self._tokenizer([caption], context_length=self.context_length)[0]

    def num_tokens(self, caption):
        """How many tokens `caption` has before truncation, start and end tokens included (more
        than context_length: the encoder reads only the first context_length - 1 and the end)."""
        # Byte-level BPE: a token covers at least one UTF-8 byte, so this context never truncates.
        # Padding is 0 after the end token (a token inside may be 0 too: "!").
        untruncated = self._tokenizer([caption],
                                      context_length=len(caption.encode("utf-8")) + 2)[0]
        return int(untruncated.nonzero().max()) + 1

    def batch(self, captions):
        """Tokens of several captions at once, shape (len(captions), context_length)."""
        return self._tokenizer(list(captions), context_length=self.context_length)


def build_tokenizer(cfg):
    return CaptionTokenizer(cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.CONTEXT_LENGTH)
