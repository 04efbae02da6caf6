"""Expert placement policies (static, FasterMoE, SmartMoE, FlexMoE, TA-MoE, EPLB) and the Placement type."""
