"""Quality measurement: the shipped Fashion-MNIST classifier, distribution metrics and paired metrics."""
