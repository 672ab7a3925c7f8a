"""GPU calibration: measure step times (optional torch), fit cost profiles, check them."""
