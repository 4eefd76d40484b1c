"""MetaMorph's visual path, restated in torch from facebookresearch/metamorph
(read, not copied) so that the C implementation can be checked against it.

  metamorph/model/multimodal_encoder/siglip_encoder.py   SiglipVisionTower.forward
      hidden_states[select_layer] of the HF SigLIP vision model (before post_layernorm),
      'interpolation' reduction: view as [b, h, w, d] -> F.interpolate(bilinear,
      align_corners=False) to sqrt(num_image_tokens)^2 -> flatten; then
      F.normalize(p=2, dim=-1) when normalize_vision.
  metamorph/model/multimodal_projector/builder.py        mlp{N}x_gelu / linear projector
  metamorph/model/language_model/metamorph_llama.py      vision_head ('mlp', 'linear'),
      llm_forward(decoding=True) and greedy_decode (no KV cache: every step recomputes
      the whole sequence from inputs_embeds).

The vision head's output width is written as 1152 in the reference; here it is
mm_hidden_size (48 in the tiny model, 1152 in the real one).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LlamaConfig

IMAGE_TOKEN_INDEX = -200


class MetaMorphConfig(LlamaConfig):
    model_type = "metamorph_llama"


def build_projector(kind, mm_hidden, hidden):
    if kind == "linear":
        return nn.Linear(mm_hidden, hidden)
    assert kind == "mlp2x_gelu", kind
    return nn.Sequential(nn.Linear(mm_hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def build_vision_head(kind, hidden, mm_hidden):
    if kind == "mlp":
        return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, mm_hidden))
    assert kind == "linear", kind
    return nn.Linear(hidden, mm_hidden)


@torch.no_grad()
def vision_tower(siglip, pixel_values, n_tokens, select_layer=-1, normalize=True):
    """SiglipVisionTower.forward with image_token_reduction='interpolation'.
    Returns (features [b, grid*grid, d] before post_layernorm, tokens [b, n_tokens, d])."""
    out = siglip(pixel_values=pixel_values, output_hidden_states=True)
    feats = out.hidden_states[select_layer]
    b, n, d = feats.shape
    x = feats
    if n != n_tokens:
        side = int(round(n ** 0.5))
        t = int(round(n_tokens ** 0.5))
        x = x.view(b, side, side, d).permute(0, 3, 1, 2).contiguous()
        x = F.interpolate(x.to(torch.float32), size=(t, t), mode="bilinear", align_corners=False)
        x = x.permute(0, 2, 3, 1).contiguous().flatten(1, 2)
    if normalize:
        x = F.normalize(x, p=2, dim=-1)
    return feats, x


class MetaMorphRef:
    """A LlamaForCausalLM plus model.mm_projector and vision_head."""

    def __init__(self, llm, projector, head, normalize_vision=True, n_image_tokens=64):
        self.llm, self.projector, self.head = llm, projector, head
        self.normalize_vision = normalize_vision
        self.n_image_tokens = n_image_tokens

    def embed_prompt(self, ids, image_tokens):
        """prepare_inputs_labels_for_multimodal for one sequence: the ids' embeddings with
        each IMAGE_TOKEN_INDEX replaced by mm_projector(image_tokens[k]) (64 rows)."""
        emb = self.llm.model.embed_tokens
        parts, k, run = [], 0, []
        for i in ids + [None]:
            if i is None or i == IMAGE_TOKEN_INDEX:
                if run:
                    parts.append(emb(torch.tensor(run)))
                    run = []
                if i is not None:
                    parts.append(self.projector(image_tokens[k]))
                    k += 1
            else:
                run.append(i)
        assert k == len(image_tokens)
        return torch.cat(parts, 0).unsqueeze(0)

    @torch.no_grad()
    def llm_forward(self, inputs_embeds, decoding):
        """llm_forward(decoding=...): returns (pred_z or None, logits of the last row,
        the (possibly replaced) last hidden row). The hidden states are the final-norm
        output; in decoding mode the last row is replaced by the projected prediction
        before lm_head, exactly as the reference does."""
        h = self.llm.model(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        pred_z = None
        if decoding:
            pred_z = self.head(h[:, -1, :])
            if self.normalize_vision:
                pred_z = F.normalize(pred_z, p=2, dim=-1)
            h = h.clone()
            h[:, -1, :] = self.projector(pred_z)
        logits = self.llm.lm_head(h[:, -1, :]).float()
        return pred_z, logits[0], h[:, -1, :]

    @torch.no_grad()
    def greedy_decode(self, inputs_embeds, start_id, end_id, eos_ids, max_new_tokens,
                      start_in_image_mode=False):
        """greedy_decode restated, same control flow and counters (including its quirks,
        which are reported so that a golden can avoid them):
          - the loop ends when total_output_tokens > max_new_tokens, i.e. after
            max_new_tokens + 1 positions;
          - in image mode the argmax of lm_head(projected prediction) is still checked
            against EOS ('eos_in_image_mode');
          - total_image_tokens is reset only by <image_end>, so a second <image_start>
            without an <image_end> in between would not produce an image
            ('image_start_without_reset').
        start_in_image_mode is our one extension (DESIGN section 7: a request may open the
        assistant turn with <image_start>); the reference starts with False.
        Returns dict(ids, images [list of [n_image_tokens, d]], positions, gaps, quirks)."""
        in_image_mode = start_in_image_mode
        generated, images, cur = [], [], []
        total_image_tokens = total_output_tokens = 0
        gaps, quirks = [], set()
        stop = "length"
        while True:
            pred_z, logits, last = self.llm_forward(inputs_embeds, decoding=in_image_mode)
            top = torch.topk(logits.double(), 2)
            nxt = int(top.indices[0])
            nxt_embed = self.llm.model.embed_tokens(torch.tensor([[nxt]]))
            if (not in_image_mode) and nxt == start_id:
                gaps.append(float(top.values[0] - top.values[1]))
                if total_image_tokens == self.n_image_tokens:
                    quirks.add("image_start_without_reset")
                in_image_mode = True
                generated.append(nxt)
                inputs_embeds = torch.cat((inputs_embeds, nxt_embed), dim=1)
            elif in_image_mode and total_image_tokens < self.n_image_tokens:
                total_image_tokens += 1
                cur.append(pred_z[0])
                inputs_embeds = torch.cat((inputs_embeds, last.unsqueeze(0)), dim=1)
                if total_image_tokens == self.n_image_tokens:
                    in_image_mode = False
                    images.append(torch.stack(cur))
                    cur = []
                if nxt in eos_ids:
                    quirks.add("eos_in_image_mode")
            elif nxt == end_id:
                gaps.append(float(top.values[0] - top.values[1]))
                in_image_mode = False
                total_image_tokens = 0
                generated.append(nxt)
                inputs_embeds = torch.cat((inputs_embeds, nxt_embed), dim=1)
            else:
                gaps.append(float(top.values[0] - top.values[1]))
                inputs_embeds = torch.cat((inputs_embeds, nxt_embed), dim=1)
                generated.append(nxt)
            total_output_tokens += 1
            if nxt in eos_ids:
                stop = "eos"
                break
            if total_output_tokens > max_new_tokens:
                break
        return dict(ids=generated, images=images, positions=total_output_tokens, gaps=gaps,
                    quirks=sorted(quirks), stop=stop, partial_image=len(cur))
