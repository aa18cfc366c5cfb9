"""Training data: dataset readers (`datasets`), stage-1 conversations and loss masks (`conversations`),
and seeded inpainting/outpainting mask generators (`masks`)."""
