// Azure ML workspace and a training cluster that scales to zero nodes when idle: where RecBole's
// training goes on larger data (GPU nodes, distributed), docs/scaling.md.

param name string
param location string
param tags object
param storageAccountId string
param keyVaultId string
param insightsId string
param vmSize string = 'Standard_NC4as_T4_v3'
@allowed(['Dedicated', 'LowPriority'])
param vmPriority string = 'LowPriority'
param maxNodes int = 2

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: name
    storageAccount: storageAccountId
    keyVault: keyVaultId
    applicationInsights: insightsId
    publicNetworkAccess: 'Enabled'
  }
}

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: 'train'
  location: location
  properties: {
    computeType: 'AmlCompute'
    description: 'RecBole training on GPU nodes; no node (and no cost) while idle'
    properties: {
      vmSize: vmSize
      vmPriority: vmPriority
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: maxNodes
        nodeIdleTimeBeforeScaleDown: 'PT10M'
      }
      remoteLoginPortPublicAccess: 'Disabled'
    }
  }
}

output workspaceName string = workspace.name
output clusterName string = cluster.name
