"""transformers code for a bertjax classifier with mean pooling (written into its HF export).

bertjax's sequence classifier (bertjax/finetuning/classify.py, ``pooling="mean"``, the default)
averages the encoder's last hidden states over the real tokens (attention mask 1, [CLS] and
[SEP] included), then applies dropout and a dense layer to the labels (one unit for
regression). transformers' BertForSequenceClassification reads BERT's tanh pooler on [CLS]
instead, so such a run is exported with this file as ``modeling_bertjax.py`` and these two
classes named in config.json's ``auto_map``::

  AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
  pipeline("text-classification", model=DIR, trust_remote_code=True)

The config has a model type of its own (``bertjax_mean_pooling``), so loading without
``trust_remote_code=True`` stops with transformers' "contains custom code" error instead of
quietly building BertForSequenceClassification, whose [CLS] pooler would give other numbers.

This file is transformers remote code: bertjax never imports it (it needs torch), the
exporter copies it. It imports transformers and torch only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel


class BertjaxMeanPoolingConfig(BertConfig):
    """BertConfig under its own model type (so that only this code loads the weights)."""

    model_type = "bertjax_mean_pooling"

    def __init__(self, pooling: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.pooling = pooling


class BertMeanPoolingForSequenceClassification(BertPreTrainedModel):
    """BERT encoder (no pooler), mean of the last hidden states over the attention mask,
    dropout, then a linear layer to ``num_labels`` outputs.

    The weights are named as BertForSequenceClassification's (``bert.*``, ``classifier.*``)
    without ``bert.pooler``; the loss follows ``config.problem_type`` as it does there.
    """

    config_class = BertjaxMeanPoolingConfig

    def __init__(self, config: BertjaxMeanPoolingConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        rate = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if rate is None else rate)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @staticmethod
    def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L, D] hidden states -> [B, D]: their mean over the positions where the mask is
        1, computed in float32 (bertjax's arithmetic), then cast back."""
        states = hidden.float()
        if attention_mask is None:
            return states.mean(dim=1).to(hidden.dtype)
        mask = attention_mask.to(torch.float32).unsqueeze(-1)  # [B, L, 1]
        total = (states * mask).sum(dim=1)
        return (total / mask.sum(dim=1).clamp(min=1e-9)).to(hidden.dtype)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        outputs = self.bert(input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids, position_ids=position_ids,
                            head_mask=head_mask, inputs_embeds=inputs_embeds,
                            output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states, return_dict=True)
        pooled = self.mean_pool(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else self._loss(logits, labels)
        if not return_dict:
            rest = (logits, outputs.hidden_states, outputs.attentions)
            rest = tuple(x for x in rest if x is not None)
            return ((loss,) + rest) if loss is not None else rest
        return SequenceClassifierOutput(loss=loss, logits=logits,
                                        hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean squared error (regression), cross-entropy (one label per example) or binary
        cross-entropy (multi-label), as ``config.problem_type`` says or the labels imply."""
        kind = self.config.problem_type
        if kind is None:
            if self.num_labels == 1:
                kind = "regression"
            elif labels.dtype in (torch.long, torch.int):
                kind = "single_label_classification"
            else:
                kind = "multi_label_classification"
        if kind == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if kind == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
