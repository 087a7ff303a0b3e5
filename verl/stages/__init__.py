"""The stages of a step that the trainer and the evaluation share: the Vision-SR1 self-reward
(`self_reward`: perception -> text-only re-answer, one batched engine call), its external
perception judge (`perception_judge`), reward scoring of rollouts (`scoring`) and the
length-clipping metrics (`clipping`), with the stage's settings (`config`). Below the trainer and
eval, above rewards and data; no Ray and no model here: engines come in as callables."""
