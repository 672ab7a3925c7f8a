"""Models of what the simulator prices and draws: step cost, acceptance, length predictors, counter-based
random numbers, the speculation policies' K choosers."""
